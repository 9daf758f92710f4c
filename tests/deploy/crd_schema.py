"""A CustomResourceDefinition's schema as `kubectl apply --validate=strict` checks a
resource: from a CRD kept as test data (offline), refusing unknown fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml


def strict(schema: Any) -> Any:
    """The CRD's schema refusing unknown fields where the API server would (it prunes them
    silently otherwise, and a misspelt field is lost): every object with `properties`, no
    `additionalProperties` and no `x-kubernetes-preserve-unknown-fields`."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    checked = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        checked["additionalProperties"] = False
    return checked


class CrdSchema:
    """Checks resources against one served version of a CRD file."""

    def __init__(self, crd_file: Path, version: str) -> None:
        # libyaml's loader where there is one: CRDs run to megabytes of YAML.
        crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = strict(served["schema"]["openAPIV3Schema"])
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        self._validator = cls(schema)

    def errors(self, document: dict[str, Any]) -> list[str]:
        """Where `document` breaks the schema, one line each (empty: valid)."""
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in self._validator.iter_errors(document)]
