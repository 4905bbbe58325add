"""Dispatch: results to their destinations. ``send`` delivers one job's objects to one
destination (C-STORE SCU or STOW-RS) and C-ECHOes peers; ``queue`` is the stage that queues,
retries and settles deliveries."""

from dicomnode.dispatcher.queue import Dispatcher, backoff
from dicomnode.dispatcher.send import DeliveryError, DeliveryReport, deliver, echo

__all__ = ["DeliveryError", "DeliveryReport", "Dispatcher", "backoff", "deliver", "echo"]
