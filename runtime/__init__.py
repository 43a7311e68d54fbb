"""Model runtime: finds, converts, loads and formats chat for every model Amend can run."""

from runtime.loader import LoadedModel, ModelLoadError, load_model
from runtime.profiles import BUILTIN_PROFILES, ModelProfile, profile_for

__all__ = [
    "BUILTIN_PROFILES",
    "LoadedModel",
    "ModelLoadError",
    "ModelProfile",
    "load_model",
    "profile_for",
]
