"""Validate Argo YAML documents against Hera's models with unknown keys forbidden.

``from_yaml`` alone silently drops misspelt keys, so this flips every generated Hera model to
``extra="forbid"`` and rebuilds it. That mutates Hera's classes for the whole process, which is
why tests run it in a subprocess: ``python -m tests.support.hera_strict FILE...`` prints
``ok FILE`` per valid document and exits 1 with the first error of each bad one.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pydantic
import yaml


def strict_models() -> dict[str, type[pydantic.BaseModel]]:
    """Kind -> strict model, after forbidding extra keys on every Hera model class."""
    import hera.workflows.models as root

    classes: list[type[pydantic.BaseModel]] = []
    for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, pydantic.BaseModel)
                and obj.__module__ == module.__name__
            ):
                classes.append(obj)
    for cls in classes:
        cls.model_config["extra"] = "forbid"
    for _ in range(2):  # parents embed children's schemas: rebuild until all are strict
        for cls in classes:
            cls.model_rebuild(force=True)
    from hera.workflows.models.io.argoproj.workflow import v1alpha1

    return {
        "WorkflowTemplate": v1alpha1.WorkflowTemplate,
        "Workflow": v1alpha1.Workflow,
        "ClusterWorkflowTemplate": v1alpha1.ClusterWorkflowTemplate,
        "CronWorkflow": v1alpha1.CronWorkflow,
    }


def main(paths: list[str]) -> int:
    models = strict_models()
    failed = 0
    for path in paths:
        for index, doc in enumerate(yaml.safe_load_all(Path(path).read_text())):
            if not doc:
                continue
            kind = doc.get("kind")
            where = f"{path}#{index} ({kind})"
            model = models.get(kind)
            if model is None:
                print(f"skip {where}: not an Argo kind")
                continue
            try:
                model.model_validate(doc)
            except pydantic.ValidationError as exc:
                failed += 1
                first = exc.errors()[0]
                loc = ".".join(str(part) for part in first["loc"])
                print(f"bad {where}: {loc}: {first['msg']}")
                continue
            print(f"ok {where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
