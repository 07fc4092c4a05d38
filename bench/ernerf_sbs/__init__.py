"""Side-by-side with ER-NeRF's own code (issue #22): patch a user's checkout of Fictionarry/ER-NeRF, adapt a subject
preprocessed by this project, train both codes' head stage for the same steps and print their figures at equal steps
and at equal wall time. No code of ER-NeRF is part of this repository: the patches are anchored text edits applied to
the user's checkout (`patches.RULES`). The CLI is bench/ernerf_side_by_side.py; docs/evaluation.md has the procedure.
"""
