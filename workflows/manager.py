"""``synesis-manager``: download -> build -> verify -> cleanup, as a WorkflowTemplate.

Rendered to ``workflows/golden/synesis-manager.yaml`` (``python workflows/submit.py render
--write``) and registered by ``python workflows/submit.py catalog --apply``.
"""

from steps import config
from workflows.pipelines import pipeline_template

w = pipeline_template("manager", config.load_cluster())
