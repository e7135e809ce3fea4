"""In-process model monitoring: forward hooks on selected modules, published to Prometheus.

The inference worker needs only :class:`ModelMonitor` and :class:`MonitorConfig`; ``metrics`` declares
every metric, ``selection``/``hooks``/``stats``/``drift`` each do one part of the measuring, and
``calibrate`` captures drift references offline.
"""

from service.monitoring.config import DriftConfig, MonitorConfig
from service.monitoring.monitor import ModelMonitor

__all__ = ["DriftConfig", "ModelMonitor", "MonitorConfig"]
