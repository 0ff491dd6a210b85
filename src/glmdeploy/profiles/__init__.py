"""Hardware profiles: the schema (``model``) and how files are found and read (``loader``)."""

from glmdeploy.profiles.loader import known_names, load_all, load_file, load_profile, resolve
from glmdeploy.profiles.model import EngineSpec, Hardware, ModelSpec, Profile

__all__ = [
    "EngineSpec",
    "Hardware",
    "ModelSpec",
    "Profile",
    "known_names",
    "load_all",
    "load_file",
    "load_profile",
    "resolve",
]
