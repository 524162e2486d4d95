"""Wafer's Python SDK: deploy, invoke and submit jobs from Python, and run functions locally.

>>> import wafer
>>> with wafer.Client() as client:               # WAFER_URL, WAFER_API_KEY
...     job = client.submit("stress", {"force": 1000, "section": 10})
...     job.wait().json()
{'stress': 100.0}

:class:`Client` and :class:`AsyncClient` share every operation; errors are the typed
exceptions of :mod:`wafer.errors`, all under :class:`WaferError`; :mod:`wafer.local` runs a
function in this process with the server's limits (``wafer.local.run``; importing it is cheap,
wasmtime is loaded at the first run).
"""

from . import local
from ._core import RetryPolicy
from .aio import AsyncClient, AsyncFunction, AsyncJob
from .client import Client, Function, Job
from .errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    FunctionError,
    FunctionTimeout,
    FunctionTrapped,
    JobCancelled,
    JobNotFinished,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
    WaferError,
    WaitTimeout,
)
from .models import FunctionInfo, JobInfo, JobList, Key, LogEntry, Module, Response, Version

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncFunction",
    "AsyncJob",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Function",
    "FunctionError",
    "FunctionInfo",
    "FunctionTimeout",
    "FunctionTrapped",
    "Job",
    "JobCancelled",
    "JobInfo",
    "JobList",
    "JobNotFinished",
    "Key",
    "LogEntry",
    "Module",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "Response",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationError",
    "Version",
    "WaferError",
    "WaitTimeout",
    "local",
]
