"""SAA+'s hybrid prompt sets as configuration: a YAML file maps product lines to their prompts.

The file format is described at the top of the packaged ``data/prompts.yaml`` (generic, MVTec AD and VisA
sets). :func:`load_prompts` resolves one product (or the generic set) to a :class:`PromptSet`, whose
:meth:`~PromptSet.digest` goes into the run's ``model_version``. No torch here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError
from pipeline.io.safe_yaml import parse_yaml

PACKAGED = Path(__file__).parent / "data" / "prompts.yaml"
SETTING = "saa.prompts_config (--prompts-config)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenericPrompts(_Strict):
    object: str = Field(min_length=1)
    captions: list[str] = Field(min_length=1)
    instances: int = Field(1, ge=1)
    max_area: float = Field(0.9, gt=0, le=1)
    max_anomalies: int = Field(5, ge=1)

    @field_validator("captions")
    @classmethod
    def _placeholders(cls, captions: list[str]) -> list[str]:
        for caption in captions:
            try:
                caption.format(name="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"caption {caption!r}: the only placeholder is {{name}} ({exc})") from None
        return captions


class ProductPrompts(_Strict):
    object: str = Field(min_length=1)
    name: str | None = Field(None, min_length=1)
    filter: str | None = Field(None, min_length=1)
    defects: list[str] = Field(default_factory=list)
    instances: int | None = Field(None, ge=1)
    max_area: float | None = Field(None, gt=0, le=1)
    max_anomalies: int | None = Field(None, ge=1)


class Caption(_Strict):
    """One language prompt and the word that marks its boxes as the object itself (official: a box whose phrase,
    the caption tokens above the text threshold, contains ``filter`` is dropped)."""

    text: str
    filter: str


class PromptsFile(_Strict):
    generic: GenericPrompts
    products: dict[str, ProductPrompts] = Field(default_factory=dict)


class PromptSet(_Strict):
    """Everything SAA+ is prompted with for one product line."""

    product: str | None
    object: str  # the caption that finds the object itself (object property prompt)
    captions: list[Caption]  # language prompts: the generic ones for this product's name, then its own
    instances: int
    max_area: float
    max_anomalies: int

    def digest(self) -> str:
        """A short content hash: equal prompt sets, equal digests, whatever file they came from."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def parse_prompts(text: str, source: str) -> PromptsFile:
    tree = parse_yaml(text, source)
    try:
        return PromptsFile.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None


def resolve_product(prompts: PromptsFile, product: str | None, source: str) -> PromptSet:
    """The prompt set of ``product`` (None: the generic set). An unknown product is a ConfigError naming it."""
    generic = prompts.generic
    if product is None:
        own = ProductPrompts(object=generic.object)
    elif product in prompts.products:
        own = prompts.products[product]
    else:
        known = ", ".join(sorted(prompts.products)) or "none"
        raise ConfigError(f"product {product!r} is not in {source} (products: {known})")
    name = own.name or own.object
    captions = [Caption(text=c.format(name=name), filter=name) for c in generic.captions]
    captions += [Caption(text=d, filter=own.filter or name) for d in own.defects]
    return PromptSet(
        product=product, object=own.object, captions=captions,
        instances=own.instances or generic.instances, max_area=own.max_area or generic.max_area,
        max_anomalies=own.max_anomalies or generic.max_anomalies)


def _source(prompts_config: str | None) -> str:
    return f"{SETTING}={prompts_config}" if prompts_config else f"the packaged prompts ({PACKAGED.name})"


def load_prompts(text: str, prompts_config: str | None, product: str | None) -> PromptSet:
    source = _source(prompts_config)
    return resolve_product(parse_prompts(text, source), product, source)


def packaged_text() -> str:
    return PACKAGED.read_text()


def check_product_locally(prompts_config: str | None, product: str | None) -> None:
    """Config-time check of ``product`` against a local (or the packaged) prompts file; an ``s3://`` file is
    checked on the driver before any worker starts."""
    if product is None or (prompts_config and prompts_config.startswith("s3://")):
        return
    if prompts_config is None:
        text = packaged_text()
    else:
        try:
            text = Path(prompts_config.removeprefix("file://")).read_text()
        except OSError as exc:
            raise ConfigError(f"{SETTING}={prompts_config}: cannot read ({exc.strerror or exc})") from None
    load_prompts(text, prompts_config, product)
