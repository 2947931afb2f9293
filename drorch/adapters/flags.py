"""The write flag applications and background jobs honour: an SSM parameter per region.

Setting it is idempotent (Overwrite=True with the same value).
"""

from __future__ import annotations

from typing import Any


def set_frozen(client: Any, parameter: str, frozen: bool) -> None:
    client.put_parameter(Name=parameter, Value="true" if frozen else "false", Type="String",
                         Overwrite=True)


def is_frozen(client: Any, parameter: str) -> bool:
    try:
        return client.get_parameter(Name=parameter)["Parameter"]["Value"] == "true"
    except client.exceptions.ParameterNotFound:
        return False
