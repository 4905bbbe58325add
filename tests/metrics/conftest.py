"""A real ``dicomnode serve`` that received a known number of instances over DICOM, shared by
the tests that read its index as ``/metrics`` would."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from dicomnode.config import Config, parse_config
from dicomnode.storage import StorageLayout
from dicomnode.store import make_engine
from tests.service.conftest import (
    RunningNode,
    base_config,
    free_port,
    running_nodes,
    storescu,
    write_ct_series,
)

#: Instances the node is sent (new ones); the same files are then sent once more (duplicates).
SENT = 12

#: Configuration beyond tests.service's base_config (jobs stay disabled: nothing is routed).
NODE_SECTIONS: dict[str, dict[str, object]] = {
    "routing": {"rules": [{"name": "ct", "match": {"modality": ["CT"]},
                           "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs"]}]},
    "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": 9}},
}


@dataclass
class ReceivedNode:
    node: RunningNode
    config: Config
    layout: StorageLayout
    engine: Engine
    sent: int


@pytest.fixture(scope="module")
def received_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceivedNode]:
    """A node (jobs disabled) that stored SENT instances of one CT series, sent by dcmtk's
    storescu in one association, then acknowledged the same SENT again as duplicates."""
    tmp = tmp_path_factory.mktemp("metrics-node")
    files = tmp / "series"
    write_ct_series(files, SENT)
    with running_nodes(tmp) as launch:
        port = free_port()
        # A rule and a destination, as a real configuration has: their metrics show 0s.
        node = launch(base_config(port, **NODE_SECTIONS), port)
        for _ in range(2):
            sent = storescu(node.port, files)
            assert sent.returncode == 0, sent.stdout
        config = parse_config(node.config, node.config_path)
        layout = StorageLayout.of(config.storage)
        engine = make_engine(layout.database_url)
        try:
            yield ReceivedNode(node, config, layout, engine, SENT)
        finally:
            engine.dispose()
