"""Static word embeddings: the embed stage (word2vec and fastText through gensim, GloVe in
torch) and the vectors it saves."""
