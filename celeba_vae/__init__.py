"""The machinery under the lecture's files. Notebooks reach it through the top-level helpers, except every
notebook's setup cell, which imports ``celeba_vae.runtime`` first. Nothing here imports a top-level module but
``model.py``. One line per module: ``celeba_vae/README.md``."""
