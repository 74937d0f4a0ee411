"""The evaluate stage: scikit-learn metrics beside a TF-IDF + LogisticRegression baseline, with
plots."""
