"""C-ECHO every DICOM destination (and every known sender results may return to) and record
the answer, which ``dicomnode status`` shows next to the deliveries."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config, DestinationConfig
from dicomnode.dispatcher.queue import sender_delivery
from dicomnode.dispatcher.send import echo
from dicomnode.store import DestinationHealth, utcnow


class DestinationChecker:
    def __init__(self, config: Config, sessions: sessionmaker[Session]):
        self.config = config
        self.sessions = sessions

    def peers(self) -> dict[str, DestinationConfig]:
        """Every peer results may go to, by delivery name."""
        peers = dict(self.config.destinations)
        if self.config.dispatch.return_to_sender:
            for ae_title in self.config.dispatch.return_to:
                destination = self.config.dispatch.sender_destination(ae_title)
                if destination is not None:
                    peers[sender_delivery(ae_title)] = destination
        return peers

    def check(self, names: Collection[str] | None = None) -> dict[str, tuple[bool, str]]:
        """Echo each peer (or those of ``names``); returns name → (reachable, detail)."""
        results = {name: echo(destination, calling_ae_title=self.config.node.ae_title)
                   for name, destination in self.peers().items()
                   if names is None or name in names}
        with self.sessions.begin() as session:
            for name, (reachable, detail) in results.items():
                row = session.get(DestinationHealth, name) or DestinationHealth(destination=name)
                row.reachable, row.detail, row.checked_at = reachable, detail, utcnow()
                session.add(row)
        return results
