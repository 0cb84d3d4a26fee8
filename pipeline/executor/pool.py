"""Plain Ray actors for the layout with one stage: they probe the videos, then run the segments.

Where every stage runs in one actor (no GPU: decode, detect and classify together), Ray Data added
only its start to a run: four more worker processes that each import Ray Data before the first actor
held its models (2.8-3.0 s on two cores, measured), a queue between the actors and the driver, and
probing on Ray's first two workers, which Ray then gives to no actor. Actors started as soon as Ray
is up take those workers instead, probe the videos, build their stage on their first segment, and
hand each segment's rows straight back.

What Ray Data gave stays: a killed actor is restarted and its call tried again (RETRIES times); a
video or segment that kills its actor on every try (a decoder crash) fails its own video only; an
error outside the stage's own per-segment handling (it cannot be built) stops the run, as does an
actor that cannot be made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from pipeline import storage
from pipeline.decode import VideoInfo, probe

RETRIES = 2  # tries after the first, for a call whose actor died


def probe_local_copy(path: str, video_id: str) -> VideoInfo:
    """Decoders need a file: a remote video is probed from this node's cached copy, which its segments reuse."""
    return probe(storage.local_file(path, video_id))


def probe_error(error: Exception) -> Exception:
    """Why a probe gave no VideoInfo: the decoder's own error, or its worker died (a crash inside the decoder)."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        return error.cause if isinstance(error.cause, Exception) else error
    return RuntimeError(f"the decoder crashed ({type(error).__name__})")


class StageActor:
    """One actor: probes videos from the start, builds the stage on its first segment, then runs one per call."""

    def __init__(self, stage: type, arguments: dict) -> None:
        self.make = lambda: stage(**arguments)
        self.stage = None

    def probe(self, path: str, video_id: str) -> VideoInfo:
        return probe_local_copy(path, video_id)

    def run(self, segment: dict) -> pa.Table:
        if self.stage is None:
            self.stage = self.make()
        return self.stage(pa.Table.from_pylist([segment]))


class ActorPool:
    """`size` StageActors over one stage class (options: Ray's num_cpus, num_gpus, resources), started at once.

    Each actor has one call at a time, so an actor's death is the fault of the call it ran and nothing
    else pays for it; the driver hands the next one over within milliseconds.
    """

    def __init__(self, stage: type, arguments: dict, size: int, options: dict) -> None:
        import ray

        remote = ray.remote(StageActor).options(max_restarts=-1, max_task_retries=RETRIES, **options)
        self.actors = [remote.remote(stage, arguments) for _ in range(max(1, size))]

    def probe(self, videos: dict[str, str]) -> Iterator[tuple[str, VideoInfo | Exception]]:
        """(path, VideoInfo or why not) for every video (path -> video_id), in the order they finish."""
        import ray

        for (path, _), result in self._calls("probe", list(videos.items()), lambda path, video_id, e: probe_error(e)):
            yield path, probe_error(result) if isinstance(result, ray.exceptions.RayTaskError) else result

    def run(self, segments: list[dict], lost: Callable[[dict, str], pa.Table]) -> Iterator[pa.Table]:
        """Each segment's rows as they come; lost(segment, why) for a segment whose actor died on every try."""
        import ray

        def died(segment: dict, error: Exception) -> pa.Table:
            return lost(segment, f"its worker died {RETRIES + 1} times (a crash in the decoder?)")

        for _, result in self._calls("run", [(s,) for s in segments], died):
            if isinstance(result, ray.exceptions.RayTaskError):  # outside the stage's per-segment errors
                raise result
            yield result

    def _calls(self, method: str, calls: list[tuple], died: Callable) -> Iterator[tuple[tuple, object]]:
        """(arguments, result) of method(*arguments) for each call, the calls spread over the actors; a call
        that raised gives its RayTaskError, one whose actor died on every try gives died(*arguments, error)."""
        import ray

        todo = iter(calls)
        running: dict[ray.ObjectRef, tuple[object, tuple]] = {}

        def hand_over(actor: object) -> None:
            arguments = next(todo, None)
            if arguments is not None:
                running[getattr(actor, method).remote(*arguments)] = (actor, arguments)

        for actor in self.actors:
            hand_over(actor)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            actor, arguments = running.pop(done)
            hand_over(actor)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as e:
                result = e
            except ray.exceptions.RayActorError as e:
                if e.actor_init_failed:  # the actor cannot even be made (its code cannot be loaded)
                    raise
                result = died(*arguments, e)
            yield arguments, result

    def close(self) -> None:
        """Stop the actors: their CPUs are free for the next run in this Ray."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
