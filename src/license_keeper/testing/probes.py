"""What a test asks a running keeper, whether a process (``keeper.py``) or a container (``container.py``):
its probes and its metrics, over plain HTTP on loopback."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["KeeperProbes"]


class KeeperProbes:
    """Probe and metrics reading for a keeper; the subclass says where it listens and whether it ended."""

    name: str
    probe_port: int
    metrics_port: int
    started_at: float  # time.monotonic() at start

    def exited(self) -> str | None:
        """None while the keeper runs, else how it ended (for the error message)."""
        raise NotImplementedError

    def logs(self) -> str:
        raise NotImplementedError

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get(self.probe_port, "/readyz")[0] == 200

    def healthy(self) -> bool:
        return self._get(self.probe_port, "/healthz")[0] == 200

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from start until /readyz answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic() - self.started_at
            ended = self.exited()
            if ended is not None:
                raise RuntimeError(f"{self.name} {ended}:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        """Samples as {'name{label="v",...}': value}, plus bare names for unlabelled ones."""
        status, text = self._get(self.metrics_port, "/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def metric(self, key: str, default: float = 0.0) -> float:
        """One sample, or ``default`` when absent or while the metrics server is not up yet."""
        try:
            return self.metrics().get(key, default)
        except RuntimeError:
            return default

    def writes(self) -> float:
        """Secret writes by this keeper, all reasons (0 while its metrics server is not up yet)."""
        try:
            samples = self.metrics()
        except RuntimeError:
            return 0.0
        return sum(v for k, v in samples.items() if k.startswith("license_keeper_secret_writes_total"))
