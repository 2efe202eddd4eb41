"""The custom resources' models: one pydantic model per resource, the CRDs are generated from them."""
