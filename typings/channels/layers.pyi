DEFAULT_CHANNEL_LAYER: str

class BaseChannelLayer:
    # Megaphone uses no channel layer: none of its methods is typed here.
    def __init__(
        self, expiry: int = 60, capacity: int = 100, channel_capacity: dict[str, int] | None = None
    ) -> None: ...

def get_channel_layer(alias: str = ...) -> BaseChannelLayer | None: ...
