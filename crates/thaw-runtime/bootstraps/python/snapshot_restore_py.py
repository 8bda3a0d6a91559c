"""Runtime hooks for snapshots, with the API of AWS's `snapshot-restore-py`.

Register functions to run before the instance is snapshotted and after each
instance is restored from the snapshot:

    from snapshot_restore_py import register_before_snapshot, register_after_restore

    @register_before_snapshot
    def close_connections():
        pool.close()

    def reconnect(url):
        pool.open(url)

    register_after_restore(reconnect, DB_URL)

thaw's Python bootstrap runs the before-snapshot hooks in reverse order of
registration once init (and the snapshot's test invocation) is done, and the
after-restore hooks in order of registration after every restore, before the
first invocation; each hook has 10 seconds. A function that bundles the PyPI
package gets that one instead (it comes first on sys.path); both keep the
hooks in the same shape, so either works with either runtime client.
"""

_before_snapshot_registry = []
_after_restore_registry = []


def register_before_snapshot(func, *args, **kwargs):
    """Run `func(*args, **kwargs)` before the snapshot is taken. Returns `func`,
    so it also works as a decorator."""
    _before_snapshot_registry.append((func, args, kwargs))
    return func


def register_after_restore(func, *args, **kwargs):
    """Run `func(*args, **kwargs)` after each restore, before the first
    invocation. Returns `func`, so it also works as a decorator."""
    _after_restore_registry.append((func, args, kwargs))
    return func


def get_before_snapshot():
    """The registered before-snapshot hooks, as (func, args, kwargs), in
    registration order."""
    return _before_snapshot_registry


def get_after_restore():
    """The registered after-restore hooks, as (func, args, kwargs), in
    registration order."""
    return _after_restore_registry
