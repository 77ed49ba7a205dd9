"""The package's imports run one way (README "Layout"): a room never imports a room above it."""

import ast
from pathlib import Path

import eidos

# Bottom to top; rooms on one level may import each other.
LEVELS = [("batch", "config"), ("model", "encoders", "objectives"), ("data",),
          ("sampling", "evaluation", "image_grids"), ("training",), ("serving", "cli")]
LEVEL = {room: level for level, rooms in enumerate(LEVELS) for room in rooms}
PACKAGE = Path(eidos.__file__).parent


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("eidos.")]


def test_every_room_is_known_and_no_import_points_up():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the package's front door re-exports from every room
        room = parts[0]
        assert room in LEVEL, f"{path} is in a room the layout does not name: add it to LEVELS and the README"
        for module in imports_of(path):
            target = module.split(".")[1]
            if LEVEL[target] > LEVEL[room]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
            if room == "data" and "prepare" not in parts and module.startswith("eidos.data.prepare"):
                upward.append(f"{path.relative_to(PACKAGE)} (read during training) imports {module} (offline)")
    assert not upward, "\n".join(upward)
