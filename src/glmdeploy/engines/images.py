"""Container image references: which engine an image ships and which version its tag pins.

Pure parsing; each engine module says which repositories are its own and how its tags name versions
(``Engine.image_repos``, ``Engine.tag_version``). An image is *known* when its tag names a published
release (or one of the engine's floating tags); the sandbox pulls only known images, as a registry would.
"""

from __future__ import annotations

from dataclasses import dataclass

from glmdeploy.engines.flags import Version


@dataclass(frozen=True)
class ImageRef:
    image: str
    repo: str  # registry/namespace/name, no tag or digest
    tag: str | None
    digest: str | None


def parse_image(image: str) -> ImageRef:
    """``ghcr.io/modeltc/lightllm:v1.2.0@sha256:...`` -> repo ``ghcr.io/modeltc/lightllm``, tag ``v1.2.0``."""
    ref, _, digest = image.partition("@")
    head, slash, last = ref.rpartition("/")
    name, colon, tag = last.partition(":")
    repo = f"{head}{slash}{name}"
    # Docker Hub's explicit spellings name the same repository: docker.io/vllm/vllm-openai is vllm/vllm-openai.
    for hub in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if repo.startswith(hub):
            repo = repo[len(hub) :]
            break
    return ImageRef(image=image, repo=repo, tag=tag if colon else None, digest=digest or None)


@dataclass(frozen=True)
class ImageVersion:
    """What glmdeploy can tell about an engine image from its reference alone."""

    image: str
    kind: str | None  # the engine whose repository this is; None for an image of no known engine
    version: Version | None  # the release the tag pins; None when unknown or floating
    floating: bool  # a moving tag (latest, nightly, main): it exists, but its version is not pinned
    known: bool  # a registry has it: a tag of a published release, an alias, or a floating tag


__all__ = ["ImageRef", "ImageVersion", "parse_image"]
