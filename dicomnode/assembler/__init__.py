"""Series assembly: quiet-period completion timers that turn complete series into jobs."""

from dicomnode.assembler.assembler import Assembler

__all__ = ["Assembler"]
