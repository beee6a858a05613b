#!/usr/bin/env python3
"""deploy/k8s/kustomization.yaml lists every manifest of the directory but
the Secret template (which holds placeholders, not credentials), and only
files that exist."""

import os
import sys

import yaml

TEMPLATES = {"secret.example.yaml"}


def main(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    problems = []
    if kustomization.get("kind") != "Kustomization":
        problems.append("kustomization.yaml: kind must be Kustomization")
    listed = kustomization.get("resources") or []
    present = {n for n in os.listdir(directory) if n.endswith(".yaml") and n != "kustomization.yaml"}
    for name in listed:
        if name not in present:
            problems.append(f"kustomization.yaml lists {name}, which does not exist")
        if name in TEMPLATES:
            problems.append(f"kustomization.yaml must not apply the template {name}")
    for name in sorted(present - set(listed) - TEMPLATES):
        problems.append(f"{name} is not listed in kustomization.yaml")
    for p in problems:
        print(p)
    if not problems:
        print(f"kustomization.yaml: {len(listed)} resources, the Secret template left out")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
