"""Dispatch: deliver result objects to destinations (C-STORE SCU, STOW-RS) and watch their health."""

from dicomnode.dispatcher.send import DeliveryError, DeliveryReport, deliver, echo

__all__ = ["DeliveryError", "DeliveryReport", "deliver", "echo"]
