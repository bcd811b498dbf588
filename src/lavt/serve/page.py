"""The web page at `/`: a Gradio Blocks app on the shared `SegmentService`.

Image in (upload, paste or drag), expressions in (one per line), **Segment**; out: the image
annotated in one colour per expression with a legend (`lavt.visualize.annotate`), the same as
probability maps behind a switch, a table per expression and the masks as PNG files. The
click is also the Gradio API endpoint `/segment` (inputs: image, expressions text).
"""
from __future__ import annotations

import html
import itertools
import re
import shutil
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from lavt import visualize
from lavt.serve.examples import Example
from lavt.serve.limits import RequestRejected, ServerBusy
from lavt.serve.service import Segmentation, SegmentService

TABLE_HEADERS = ["expression", "px", "%", "mean P", "ms"]
TABLE_NOTE = ("*px*, *%*: the mask's area; *mean P*: the mean probability inside the mask (the REST "
              "`score`); *ms*: the one batched forward of all the expressions together.")
API_DESCRIPTION = (
    "Segment each expression (one per line) in the image, all in one batched forward. Returns: "
    "[0] the annotated image (PNG, one colour per expression, legend underneath), "
    "[1] the same with each expression's probability map as the opacity of its colour, "
    "[2] the legend as HTML, [3] the table (expression, area in pixels, area in % of the image, "
    "mean probability inside the mask, milliseconds of the batched forward), "
    "[4] the masks as PNG files at the image's size (white = object), in the order given."
)
CSS = """
.lavt-legend { display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; margin: 0.3em 0; }
.lavt-legend-entry { display: inline-flex; align-items: center; gap: 0.4em; }
.lavt-swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; }
"""
KEEP_REQUEST_FOLDERS = 64  # mask files of older requests are deleted (Gradio serves its own copies)


def legend_html(labels: Sequence[str]) -> str:
    """The legend as HTML: a swatch in each expression's palette colour, then the expression."""
    entries = []
    for i, label in enumerate(labels):
        r, g, b = visualize.colour(i)
        entries.append(
            f'<span class="lavt-legend-entry"><span class="lavt-swatch" style="background: rgb({r}, {g}, {b})">'
            f'</span><span class="lavt-legend-label">{i + 1}. {html.escape(label)}</span></span>'
        )
    return f'<div class="lavt-legend" id="lavt-legend-entries">{"".join(entries)}</div>'


def model_markdown(service: SegmentService) -> str:
    info = service.info
    return (
        f"**Model:** `{info['name']}`: {info['architecture']}; {'x'.join(map(str, info['input_size']))} px input, "
        f"{info['parameters'] / 1e6:.1f} M parameters with the text encoder  \n"
        f"**Checkpoint:** `{info['checkpoint']}`  \n"
        f"**Device:** {info['device']} · **Precision:** {info['precision']}  \n"
        f"**Limits:** {service.limits.describe()}; expressions longer than {info['max_tokens']} tokens are cut"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "expression"


class PageHandler:
    """The page's function: a request through the service, then the pictures, table and files."""

    def __init__(self, service: SegmentService, work_dir: Path) -> None:
        self.service = service
        self.mask_dir = Path(work_dir) / "masks"
        self._ids = itertools.count()
        self._folders: deque[Path] = deque()
        self._lock = threading.Lock()

    def __call__(self, image: str | None, expressions: str) -> tuple[Any, ...]:
        if not image:
            raise gr.Error("Upload an image first (or pick an example below).", print_exception=False)
        try:
            result = self.service.segment(image, expressions or "", preview=True)
        except (RequestRejected, ServerBusy) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        for note in result.warnings:
            gr.Warning(note)
        return self.render(result)

    def render(self, result: Segmentation) -> tuple[Any, ...]:
        none = result.no_target or [False] * len(result.expressions)
        shown = [f"{text} (no such object)" if n else text for text, n in zip(result.expressions, none)]
        labels = [f"{i + 1}. {text}" for i, text in enumerate(shown)]
        annotated = visualize.annotate(result.preview, result.preview_masks, labels)
        probability = visualize.annotate_probabilities(result.preview, result.preview_probabilities, labels)
        total = result.width * result.height
        ms = round(1000.0 * result.seconds, 1)
        rows = [
            [text, area, round(100.0 * area / total, 2), round(score, 4), ms]
            for text, area, score in zip(shown, result.areas, result.scores)
        ]
        request = next(self._ids)
        folder = self.mask_dir / f"{request:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Pictures go out as files with names unique to the request: Gradio caches an output
        # under a folder named by its content hash, and rewrites a PIL image there on every
        # request, so two requests with the same result would truncate a file while a client
        # downloads it; a file path it copies only once.
        pictures = [visualize.save_png(annotated, folder / f"result_{request}.png"),
                    visualize.save_png(probability, folder / f"probability_{request}.png")]
        return str(pictures[0]), str(pictures[1]), legend_html(shown), rows, self._write_masks(result, folder, request)

    def _write_masks(self, result: Segmentation, folder: Path, request: int) -> list[str]:
        paths = []
        for k, (text, mask) in enumerate(zip(result.expressions, result.masks), start=1):
            path = folder / f"mask_{k}_{_slug(text)}_r{request}.png"
            visualize.save_png(visualize.mask_image(mask), path)
            paths.append(str(path))
        with self._lock:
            self._folders.append(folder)
            stale = [self._folders.popleft() for _ in range(max(0, len(self._folders) - KEEP_REQUEST_FOLDERS))]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return paths


def _toggle(show_probability: bool) -> tuple[Any, Any]:
    return gr.update(visible=not show_probability), gr.update(visible=show_probability)


def build_page(service: SegmentService, examples: Sequence[Example], work_dir: Path) -> gr.Blocks:
    """The Blocks app; the first example is shown already segmented, and every example's
    result is cached when the server starts."""
    handler = PageHandler(service, work_dir)
    first = examples[0] if examples else None
    initial: tuple[Any, ...] = (None, None, "", None, None)
    if first is not None:
        initial = handler.render(service.segment(first.image, first.text, preview=True))
    with gr.Blocks(title="LAVT referring segmentation", analytics_enabled=False, delete_cache=(900, 1800)) as page:
        gr.Markdown(
            "# LAVT: referring image segmentation\n"
            "Upload, paste or drop an image, write what to segment (one expression per line) and press **Segment**."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                 value=str(first.image) if first else None, elem_id="lavt-image")
                text = gr.Textbox(label="Expressions", lines=4, value=first.text if first else "",
                                  placeholder="the red circle\nthe blue square", elem_id="lavt-expressions")
                button = gr.Button("Segment", variant="primary", elem_id="lavt-segment")
                switch = gr.Checkbox(label="Show the probability map instead of the mask", value=False,
                                     elem_id="lavt-probability-switch")
                gr.Markdown(model_markdown(service), elem_id="lavt-model")
            with gr.Column():
                result = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                  value=initial[0], elem_id="lavt-result")
                probability = gr.Image(label="Result (probability)", type="filepath", format="png",
                                       interactive=False, visible=False, value=initial[1],
                                       elem_id="lavt-probability")
                legend = gr.HTML(value=initial[2], label="Legend", elem_id="lavt-legend")
                table = gr.Dataframe(value=initial[3], headers=TABLE_HEADERS, label="Per expression",
                                     interactive=False, elem_id="lavt-table")
                gr.Markdown(TABLE_NOTE)
                files = gr.File(value=initial[4], label="Masks (PNG)", file_count="multiple",
                                interactive=False, elem_id="lavt-masks")
        outputs = [result, probability, legend, table, files]
        button.click(handler, [image, text], outputs, api_name="segment", api_description=API_DESCRIPTION,
                     concurrency_limit=service.gate.concurrency)
        switch.change(_toggle, [switch], [result, probability], api_visibility="private", queue=False)
        if examples:
            gr.Examples(
                examples=[[str(e.image), e.text] for e in examples], inputs=[image, text], outputs=outputs,
                fn=handler, cache_examples=True, cache_mode="eager",
                label="Examples (generated scenes; results ready)",
            )
    page.queue(max_size=max(1, service.gate.queue_size), default_concurrency_limit=service.gate.concurrency)
    return page


def mount_page(app: Any, page: gr.Blocks, service: SegmentService) -> Any:
    """Mount the page at `/` on the FastAPI app (routes added before it take precedence)."""
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(
        app, page, path="/", max_file_size=service.limits.max_upload_bytes, ssr_mode=False,
        footer_links=["api"], theme=theme, css=CSS, mcp_server=False,
    )
