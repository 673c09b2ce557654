"""Data: the corpus rebuilt from registry packages (`corpus`), and readers of labelled tables, training
pairs and prefix files."""
