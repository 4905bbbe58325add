"""De-identification for research destinations: PS3.15 Annex E Basic Application Level
Confidentiality Profile with selectable options, keyed pseudonyms and UID remapping."""

from converters.deid.profile import Action, Options, actions
from converters.deid.transform import Deidentified, Deidentifier, Pseudonym, burned_in_reason

__all__ = ["Action", "Deidentified", "Deidentifier", "Options", "Pseudonym", "actions",
           "burned_in_reason"]
