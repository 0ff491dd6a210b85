"""Will the pinned engine accept this profile's launch? The check ``profiles validate``, ``plan`` and ``up`` share.

Three facts, all from the image reference and the flag tables, before anything is rented:

- the flags the builder produced (``extra_args`` included) that the image's engine version refuses;
- whether the tag names a release glmdeploy knows (else the version, and so its flags, are unknown);
- whether that engine version can load the model at all (GLM-4.7-Flash needs glm4_moe_lite support).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from glmdeploy.engines.flags import FlagTable, Rejected, version_text
from glmdeploy.engines.images import ImageVersion

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile


@dataclass(frozen=True)
class LaunchCheck:
    kind: str
    display_name: str
    image: ImageVersion
    table: FlagTable | None
    rejected: tuple[Rejected, ...]
    model_error: str | None
    other_engine: str | None = None  # the engine whose repository the image is from, when not this one

    @property
    def engine_label(self) -> str:
        """``vLLM 0.24.0``, or ``vLLM latest`` for a floating tag."""
        if self.table is not None and not self.image.floating:
            return f"{self.display_name} {version_text(self.table.version)}"
        if self.image.version is not None:
            return f"{self.display_name} {version_text(self.image.version)}"
        tag = self.image.image.rpartition(":")[2] if ":" in self.image.image.rpartition("/")[2] else "latest"
        return f"{self.display_name} {tag}"

    @property
    def flags_refusal(self) -> str | None:
        """One line naming the first refused flag and the version; None when every flag is accepted."""
        if not self.rejected:
            return None
        first = self.rejected[0]
        more = ""
        if len(self.rejected) > 1:
            more = "; also " + ", ".join(f"{r.flag} ({r.reason})" for r in self.rejected[1:])
        return (
            f"{first.flag} is not accepted by {self.engine_label} ({first.reason}), "
            f"the engine of image {self.image.image}{more}"
        )

    @property
    def version_warning(self) -> str | None:
        """Why the flags could not be checked, when they could not."""
        info = self.image
        if info.kind is None and self.other_engine is not None:
            return f"image {info.image} ships {self.other_engine}, not {self.display_name}: the launch would fail"
        if info.kind is None:
            return f"image {info.image} is not a known {self.display_name} image: its version and flags are not known"
        if not info.known:
            return f"image tag of {info.image} names no known {self.display_name} release: its version is not known"
        if info.floating:
            newest = f", checked against the newest known, {version_text(self.table.version)}" if self.table else ""
            return f"image {info.image} is a moving tag: its {self.display_name} version is not pinned{newest}"
        if self.table is None:
            return f"the flags of {self.engine_label} were not read: the launch command is not checked"
        return None

    @property
    def version_known(self) -> bool:
        return self.image.known and not self.image.floating

    @property
    def model_refusal(self) -> str | None:
        if self.model_error is None:
            return None
        return (
            f"{self.engine_label} in {self.image.image} cannot load this model; "
            f"the engine would end with: {self.model_error}"
        )


def check_launch(profile: Profile) -> LaunchCheck:
    """Check ``profile``'s launch command against its image's engine version (pure, no I/O)."""
    from glmdeploy.engines import get_engine, image_version

    engine = get_engine(profile.engine.kind)
    image = profile.engine.image
    info = engine.image_version(image)
    owner = image_version(image).kind if info.kind is None else None
    if info.kind is None:
        # An image of another repository (a custom build): nothing to check the flags against.
        table = None
    else:
        table = engine.flag_table(image)
    argv = engine.argv(profile)
    rejected = tuple(table.rejected(argv[len(engine.program) :])) if table is not None else ()
    return LaunchCheck(
        kind=engine.kind,
        display_name=engine.display_name,
        image=info,
        table=table,
        rejected=rejected,
        model_error=engine.model_support_error(profile.model.arch, image),
        other_engine=get_engine(owner).display_name if owner is not None else None,
    )


__all__ = ["LaunchCheck", "check_launch"]
