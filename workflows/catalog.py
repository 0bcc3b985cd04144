"""The WorkflowTemplate catalog: what ``submit.py catalog`` registers for the Argo UI.

``synesis-manager`` and ``synesis-executor`` (submit, watch and retry from the UI) and
``synesis-all`` (every model profile, which creates child workflows from the other two).
"""

from __future__ import annotations

from hera.workflows import WorkflowTemplate

from steps import config
from workflows.pipelines import all_template, pipeline_template


def templates(
    cfg: config.ClusterConfig | None = None, profiles: config.ModelProfiles | None = None
) -> list[WorkflowTemplate]:
    """Every catalog template, built from config (environment overrides applied when not given)."""
    cfg = cfg or config.load_cluster()
    profiles = profiles or config.load_model_profiles()
    return [
        pipeline_template("manager", cfg),
        pipeline_template("executor", cfg),
        all_template(cfg, profiles),
    ]
