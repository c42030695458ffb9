"""Built-in targets, one package each: targets/<name>/__init__.py (options, availability,
conversion) and targets/<name>/runtime.py (the code that ships and that validation runs)."""

import packager.shipped  # noqa: F401 - resolves the shipped siblings runtime.py imports (ort_session)
