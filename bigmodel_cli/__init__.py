"""bigmodel: raw text to a pretrained, fine-tuned and explained Transformer, in one workspace."""

__version__ = "0.1.0"
