"""``python -m app.engine.schemas``: regenerate the shipped JSON Schemas from the models."""

from app.engine.schemas.generate import write_schemas

for path in write_schemas():
    print(path)
