"""``synesis-executor``: download -> NVFP4 quantize (GPU) -> build -> verify -> cleanup.

Rendered to ``workflows/golden/synesis-executor.yaml``; registered by ``catalog --apply``.
"""

from steps import config
from workflows.pipelines import pipeline_template

w = pipeline_template("executor", config.load_cluster())
