"""Training pieces shared by the scripts: the step core, the ImageNet recipe, the script skeletons.

Import the submodules directly, e.g. ``from common.train import step``.
"""
