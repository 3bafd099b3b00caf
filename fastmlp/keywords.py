"""Errors for near-miss spellings: what the caller wrote, and what works.

``checked_init`` wraps a constructor so that a call that does not fit its
signature is a TypeError naming the closest real keyword (``activaton`` ->
``activation``) or, for missing positional arguments, the form that works with
an example (``Dense(256)`` -> "Dense takes (in_features, out_features): Dense(784,
256)"). ``check_choice`` does the same for a string option (``padding="sam"``).
Every check runs before the constructor body, so a refused call changes nothing.
"""
import difflib
import functools
import inspect


def closest(name, choices):
    """The choice closest to ``name`` (difflib, case-insensitive), or None."""
    lowered = {str(c).lower(): c for c in choices}
    found = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def did_you_mean(name, choices):
    """"; did you mean 'x'?" when some choice is close to ``name``, else ""."""
    near = closest(name, choices)
    return f"; did you mean {near!r}?" if near is not None else ""


def check_choice(owner, what, value, choices):
    """``value`` when it is one of the strings ``choices``, else a ValueError listing them."""
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices) if isinstance(value, str) else ""
    raise ValueError(f"{owner}: expected {what} to be one of {list(choices)}, got {value!r}{hint}")


def _parameters(fn):
    # (positional-or-keyword names without self, required ones among them, keyword names)
    params = list(inspect.signature(fn).parameters.values())[1:]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    return named, required


def _call_text(owner, args, kwargs):
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{owner}({', '.join(parts)})"


def signature_error(owner, fn, args, kwargs, example=None):
    """The TypeError for a call of ``fn`` (a method: self first) that does not bind, or None
    when it does."""
    named, required = _parameters(fn)
    for key in kwargs:
        if key not in named:
            return TypeError(f"{owner}: unknown keyword {key!r}{did_you_mean(key, named)} "
                             f"(it takes {', '.join(named)}); got {_call_text(owner, args, kwargs)}")
    try:
        inspect.signature(fn).bind(None, *args, **kwargs)
    except TypeError as e:
        form = f"{owner} takes ({', '.join(required)})"
        if example:
            form += f": {example}"
        return TypeError(f"{form}; got {_call_text(owner, args, kwargs)} ({e})")
    return None


def checked_init(init):
    """``init`` (a constructor) that first checks its call against its signature; errors
    name the class called and show its ``example`` attribute, if any."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        cls = type(self)
        if cls.__init__ is wrapper:     # the class's own call, not a subclass's super()
            problem = signature_error(cls.__name__, init, args, kwargs, getattr(cls, "example", None))
            if problem is not None:
                raise problem
        init(self, *args, **kwargs)
    wrapper.__wrapped_checked__ = True
    return wrapper
