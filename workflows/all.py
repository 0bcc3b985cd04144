"""``synesis-all``: every model profile in ``config/models.yaml``, ``argo.parallelism`` at once.

Rendered to ``workflows/golden/synesis-all.yaml``; needs the manager and executor templates
registered too (``catalog --apply`` registers all three).
"""

from steps import config
from workflows.pipelines import all_template

w = all_template(config.load_cluster(), config.load_model_profiles())
