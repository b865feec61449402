"""Fault knobs of one local cloud: what can go wrong, and how often.

Every knob has a kebab-case name used alike in the local cloud's YAML, in the
admin endpoint's JSON and on the ``devstack-localcloud faults`` command line.
``validate()`` turns user input into the normal form (delays always become
``{"min": a, "max": b}``, quota entries ``None`` for unlimited) and raises
``FaultError`` naming the knob; ``merge()`` applies a partial update the way
``PUT /clouds/<name>/faults`` does (mapping-valued knobs merge one level deep;
list-valued ones, ``bad-images``, are replaced whole).

Randomness never lives here: the cloud draws from its own seeded
``random.Random`` via ``chance()`` and ``sample()`` so a test with a seed is
deterministic, and rates of exactly 0 or 1 never consult the generator at all.
"""

import copy
import numbers
import re

#: The knobs, their defaults and what they mean.  Rates are probabilities in
#: [0, 1]; delays are seconds, uniform between min and max.
DEFAULTS = {
    # seconds from POST /servers until ACTIVE (or ERROR)
    "boot-delay": {"min": 0.0, "max": 0.0},
    # probability a boot ends in ERROR with a fault
    "boot-error-rate": 0.0,
    # probability an ACTIVE server never sends an SSH banner
    "no-network-rate": 0.0,
    # probability a server stays in BUILD forever
    "stuck-build-rate": 0.0,
    # seconds added before every API answer
    "api-latency": {"min": 0.0, "max": 0.0},
    # seconds added (on top of api-latency) before the answer to a DELETE call
    "delete-latency": {"min": 0.0, "max": 0.0},
    # probability an API call answers 500 (computeFault and friends)
    "api-error-rate": 0.0,
    # probability an API call answers 429 overLimit with Retry-After
    "api-overlimit-rate": 0.0,
    # the Retry-After value (whole seconds) sent with those 429s
    "api-overlimit-retry-after": 1,
    # absolute limits; None = unlimited (nova shows -1)
    "quota": {"instances": None, "cores": None, "ram": None},
    # seconds from createImage until the image is active (or killed)
    "snapshot-delay": {"min": 0.0, "max": 0.0},
    # probability a snapshot ends 'killed'
    "snapshot-failure-rate": 0.0,
    # True: the API port refuses connections
    "outage": False,
    # a DELETE answers 204 but the server stays in N more list calls
    "lying-delete-lists": 0,
    # lifetime of new tokens, seconds
    "token-ttl": 3600.0,
    # answers that are not what the call expects: {call kind: nonsense},
    # "all" for every kind not named (see NONSENSE_KINDS and NONSENSE)
    "nonsense": {},
    # list paging: "normal", "repeat-marker" (the server list ignores its
    # marker, glance's next link repeats it) or "endless" (always one more
    # page of made-up entries)
    "paging": "normal",
    # an ACTIVE, reachable server stops answering SSH (a hung VM: TCP still
    # accepted, no banner ever) "after" seconds after it went ACTIVE, with
    # probability "rate"; decided when the server is created
    "node-death": {"rate": 0.0, "after": {"min": 0.0, "max": 0.0}},
    # regular expressions; a server booted from an image whose name fully
    # matches one gets BAD_IMAGE_MARKER in its root (its HOME)
    "bad-images": [],
}

#: The file a server booted from a "bad" image (see the bad-images knob) finds
#: in its root directory, the login's HOME: one line naming the image.  It is
#: set or removed at every boot, so a snapshot never carries it to an image
#: whose name does not match.
BAD_IMAGE_MARKER = ".localcloud-bad-image"

RATES = ("boot-error-rate", "no-network-rate", "stuck-build-rate",
         "api-error-rate", "api-overlimit-rate", "snapshot-failure-rate")
DELAYS = ("boot-delay", "api-latency", "delete-latency", "snapshot-delay")
QUOTA_KEYS = ("instances", "cores", "ram")
#: The calls whose answers "nonsense" can garble ("all": each one not named).
NONSENSE_KINDS = ("all", "list-servers", "show-server", "create-server",
                  "server-action", "list-flavors", "list-keypairs",
                  "show-keypair", "create-keypair", "list-images",
                  "show-image")
#: What a garbled answer is: a JSON body cut in half; an HTML page with status
#: 200; ``{}``; the (first) server/image/flavor/keypair without its id, or
#: name; that entry a string instead of an object; a server whose addresses
#: are null, or whose metadata is a list.  A change that does not apply to a
#: call's answer (addresses of a flavor) leaves it as it is.
NONSENSE = ("truncated-json", "html-200", "empty-object", "missing-id",
            "missing-name", "string-item", "null-addresses", "bad-metadata")
PAGING = ("normal", "repeat-marker", "endless")
NODE_DEATH_KEYS = ("rate", "after")


class FaultError(ValueError):
    """A knob value that does not validate; the message names the knob."""


def defaults():
    return copy.deepcopy(DEFAULTS)


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FaultError("%s: expected a number, got %r" % (where, value))
    return float(value)


def _rate(value, where):
    value = _number(value, where)
    if not 0.0 <= value <= 1.0:
        raise FaultError("%s: expected a probability between 0 and 1, got %r"
                         % (where, value))
    return value


def _seconds(value, where):
    value = _number(value, where)
    if value < 0:
        raise FaultError("%s: expected seconds >= 0, got %r" % (where, value))
    return value


def _count(value, where, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        expected = "a whole number >= 0" + (" or null (unlimited)"
                                            if allow_none else "")
        raise FaultError("%s: expected %s, got %r" % (where, expected, value))
    return value


def _delay(value, current, where):
    """A delay is a number (fixed) or {min, max} (uniform); a mapping may give
    only one bound, the other is kept from ``current``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"min", "max"})
        if unknown:
            raise FaultError("%s.%s: unknown key; valid keys are min, max"
                             % (where, unknown[0]))
        low = _seconds(value.get("min", current["min"]), where + ".min")
        high = _seconds(value.get("max", current["max"]), where + ".max")
        if "max" not in value and high < low:
            high = low
        if "min" not in value and low > high:
            low = high
    else:
        low = high = _seconds(value, where)
    if low > high:
        raise FaultError("%s: min %s is greater than max %s" % (where, low, high))
    return {"min": low, "max": high}


def _quota(value, current, where):
    if not isinstance(value, dict):
        raise FaultError("%s: expected a mapping with keys %s, got %r"
                         % (where, ", ".join(QUOTA_KEYS), value))
    result = dict(current)
    for key, item in value.items():
        if key not in QUOTA_KEYS:
            raise FaultError("%s.%s: unknown key; valid keys are %s"
                             % (where, key, ", ".join(QUOTA_KEYS)))
        result[key] = _count(item, "%s.%s" % (where, key), allow_none=True)
    return result


def _nonsense(value, current, where):
    """A mapping {kind: nonsense}; a kind mapped to null or "none" is turned
    off, and null for the whole knob turns every kind off."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FaultError("%s: expected a mapping of call kinds (%s) to one of "
                         "%s, got %r" % (where, ", ".join(NONSENSE_KINDS),
                                         ", ".join(NONSENSE), value))
    result = dict(current)
    for kind, item in value.items():
        if kind not in NONSENSE_KINDS:
            raise FaultError("%s.%s: unknown call kind; valid kinds are %s"
                             % (where, kind, ", ".join(NONSENSE_KINDS)))
        if item is None or item == "none":
            result.pop(kind, None)
        elif item in NONSENSE:
            result[kind] = item
        else:
            raise FaultError("%s.%s: expected one of %s (or none), got %r"
                             % (where, kind, ", ".join(NONSENSE), item))
    return result


def _node_death(value, current, where):
    """{rate, after}: a mapping may give only one of them, the other is kept
    from ``current``; ``after`` is a delay (merged like the others)."""
    if not isinstance(value, dict):
        raise FaultError("%s: expected a mapping with keys %s, got %r"
                         % (where, ", ".join(NODE_DEATH_KEYS), value))
    unknown = sorted(set(value) - set(NODE_DEATH_KEYS))
    if unknown:
        raise FaultError("%s.%s: unknown key; valid keys are %s"
                         % (where, unknown[0], ", ".join(NODE_DEATH_KEYS)))
    result = copy.deepcopy(current)
    if "rate" in value:
        result["rate"] = _rate(value["rate"], where + ".rate")
    if "after" in value:
        result["after"] = _delay(value["after"], current["after"],
                                 where + ".after")
    return result


def _bad_images(value, where):
    """A list of regular expressions (strings that compile); null is []."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FaultError("%s: expected a list of regular expressions (image "
                         "names must match one fully), got %r" % (where, value))
    for index, pattern in enumerate(value):
        item = "%s[%d]" % (where, index)
        if not isinstance(pattern, str):
            raise FaultError("%s: expected a regular expression (a string), "
                             "got %r" % (item, pattern))
        try:
            re.compile(pattern)
        except re.error as e:
            raise FaultError("%s: not a valid regular expression %r: %s"
                             % (item, pattern, e)) from None
    return list(value)


def bad_image(faults, name):
    """True if an image called ``name`` is "bad": it fully matches one of the
    bad-images expressions."""
    return any(re.fullmatch(pattern, name or "")
               for pattern in faults["bad-images"])


def nonsense_for(faults, kind):
    """The nonsense the answer to a call of ``kind`` gets, or None."""
    table = faults["nonsense"]
    return table.get(kind, table.get("all"))


def merge(current, update, where="faults"):
    """Return a new knob dict: ``current`` with ``update`` applied.

    ``update`` may hold any subset of the knobs.  Raises FaultError (naming
    ``where`` and the knob) for an unknown knob or a bad value; ``current`` is
    never modified.
    """
    if not isinstance(update, dict):
        raise FaultError("%s: expected a mapping of knob names to values, got %r"
                         % (where, update))
    result = copy.deepcopy(current)
    for key, value in update.items():
        path = "%s.%s" % (where, key)
        if key not in DEFAULTS:
            raise FaultError("%s: unknown fault knob; valid knobs are %s"
                             % (path, ", ".join(sorted(DEFAULTS))))
        if key in RATES:
            result[key] = _rate(value, path)
        elif key in DELAYS:
            result[key] = _delay(value, current[key], path)
        elif key == "quota":
            result[key] = _quota(value, current[key], path)
        elif key == "outage":
            if not isinstance(value, bool):
                raise FaultError("%s: expected true or false, got %r"
                                 % (path, value))
            result[key] = value
        elif key in ("lying-delete-lists", "api-overlimit-retry-after"):
            result[key] = _count(value, path)
        elif key == "nonsense":
            result[key] = _nonsense(value, current[key], path)
        elif key == "paging":
            if value not in PAGING:
                raise FaultError("%s: expected one of %s, got %r"
                                 % (path, ", ".join(PAGING), value))
            result[key] = value
        elif key == "node-death":
            result[key] = _node_death(value, current[key], path)
        elif key == "bad-images":
            result[key] = _bad_images(value, path)
        elif key == "token-ttl":
            ttl = _seconds(value, path)
            if ttl <= 0:
                raise FaultError("%s: expected seconds > 0, got %r"
                                 % (path, value))
            result[key] = ttl
    return result


def validate(update, where="faults"):
    """Defaults with ``update`` applied (for a cloud's configuration)."""
    return merge(defaults(), update or {}, where)


def chance(rng, rate):
    """True with probability ``rate``; 0 and 1 never draw from ``rng``."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    return rng.random() < rate


def sample(rng, delay):
    """Seconds drawn uniformly from a {min, max} delay."""
    if delay["max"] <= delay["min"]:
        return delay["min"]
    return rng.uniform(delay["min"], delay["max"])
