"""The workspace: its folders and lock, the config file, and the record of every stage run."""
