"""``cmcnn-reproduce``: the paper's Section IV experiments as one resumable sweep and a report.

Modules: :mod:`.rows` (Tables I-III rows and the paper's numbers),
:mod:`.sweep` (data, folds, resumable training), :mod:`.report`
(report.md, claims, Figs. 6-8), :mod:`.cli` (the console entry point).
"""
