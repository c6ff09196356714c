"""The JSON bodies the API accepts, one model per kind of run, with their limits.

Every model forbids unknown fields and is strict about types (a number is not
read from a string), so that a typo or a wrong type is a 422 naming the field
rather than a silently ignored or coerced value. The limits bound the work one
request can ask for; :class:`Limits` holds them so that a server can be built
with others (the tests use small ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, create_model


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 2_000_000  # a larger request is a 413 before it is read; a WAV of about a minute fits
    max_text_chars: int = 1000  # a sentence to classify or translate, a prime
    max_values: int = 10_000  # recent values to forecast from
    max_characters: int = 2000  # characters one charlm request may generate
    max_events: int = 256  # note events one music request may generate
    request_timeout_s: float = 30.0  # a predict request, or a whole generation stream


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def request(name: str, **fields):
    """A strict model named ``name`` (the OpenAPI schema's name: each run gets its own, since limits differ)."""
    return create_model(name, __base__=Strict, **fields)


def text_request(name: str, limits: Limits):
    return request(name, text=(str, Field(min_length=1, max_length=limits.max_text_chars, description="the sentence")))


def values_request(name: str, limits: Limits, minimum: int):
    description = f"the recent values, oldest first (at least {minimum})"
    return request(name, values=(list[float], Field(min_length=minimum, max_length=limits.max_values, description=description)))


def digits_request(name: str, count: int):
    description = f"{count} digits; the strip is made of held-out test images of them"
    return request(name, digits=(str, Field(pattern=rf"^[0-9]{{{count}}}$", description=description)))


def audio_request(name: str, limits: Limits):
    description = "a WAV file (16-bit PCM or 32-bit float, mono or stereo, 8-96 kHz, up to 30 s), base64-encoded"
    return request(name, wav_base64=(str, Field(min_length=1, max_length=limits.max_body_bytes, description=description)))


def generate_request(name: str, limits: Limits, max_length: int, default_prime: str, default_length: int):
    return request(
        name,
        prime=(str, Field(default_prime, max_length=limits.max_text_chars, description="what the sample continues")),
        length=(int, Field(default_length, ge=1, le=max_length, description="tokens to generate")),
        temperature=(float, Field(0.8, gt=0, le=10, description="below 1: safer; above 1: wilder")),
        top_k=(int | None, Field(None, ge=1, description="draw only from the k most probable tokens")),
        top_p=(float | None, Field(None, gt=0, le=1, description="draw only from the most probable tokens holding this mass")),
        seed=(int, Field(0, ge=0, le=2**63 - 1, description="random seed")),
    )
