"""Text in: readers, cleaning, segmentation, stopwords, vocabulary and tokenizer, and the
preprocess stage that writes data/processed/."""
