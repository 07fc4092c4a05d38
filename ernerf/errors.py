"""The one exception type a user can see."""


class ErnerfError(RuntimeError):
    """A problem the user can fix: the message says what was wrong and what to do."""


def user_error_in(exc: BaseException) -> ErnerfError | None:
    """The ErnerfError that caused `exc`, when a library wrapped one (Hydra's instantiate does); else None."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ErnerfError):
        cause = cause.__cause__ or cause.__context__
    return cause


def instantiate_config(config: object) -> object:
    """Hydra's `instantiate`, with an ErnerfError a constructor raised re-raised as is (Hydra wraps it in its own
    InstantiationException, whose message a user should not have to read)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config)
    except InstantiationException as exc:
        cause = user_error_in(exc)
        if cause is None:
            raise
        raise cause from None
