"""The paper this project implements, as the dataset and model cards cite it."""

PAPER = "Cherep & Singh, *Contrastive Learning from Synthetic Audio Doppelgängers*, ICLR 2025"
# The paper in BibTeX, for every card we write (dataset cards and model cards).
PAPER_CITATION = """```bibtex
@inproceedings{cherep2025doppelgangers,
  title     = {Contrastive Learning from Synthetic Audio Doppelg{\\"a}ngers},
  author    = {Cherep, Manuel and Singh, Nikhil},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}
```
"""
