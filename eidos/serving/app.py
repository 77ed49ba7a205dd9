"""The live demo's web page (gradio): a prompt box, the sampling options and a grid of samples that updates as
the prompt is typed. Nothing on it reaches the internet: analytics off, no share link, local fonts only."""

from __future__ import annotations

import os

from eidos.serving.live import CONSISTENCY_STEPS, MAX_IMAGES, LiveGenerator, Request, Result

EXAMPLE_PROMPT = "red apple"


def import_gradio():
    """gradio, with telemetry and its version check off (read from the environment when it is imported)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise ImportError("eidos serve needs gradio: pip install 'eidos[serve]' (or pip install gradio)") from error
    return gradio


def build_app(generator: LiveGenerator):
    """A `gradio.Blocks` page bound to `generator`; `launch_app` serves it."""
    gr = import_gradio()
    with gr.Blocks(title="Eidos live demo", analytics_enabled=False) as app:
        gr.Markdown("## Eidos live demo\nType a prompt: the samples update as you type.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPT, elem_id="prompt",
                                    info=f"the text encoder reads {generator.max_tokens} tokens")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)")
                sampler = gr.Radio(["consistency", "flow"], value="consistency", label="Sampler")
                consistency_steps = gr.Radio(list(CONSISTENCY_STEPS), value=1, label="Consistency steps")
                flow_steps = gr.Slider(1, 100, value=30, step=1, label="Flow Euler steps", visible=False)
                guidance_scale = gr.Slider(1.0, 5.0, value=1.75, step=0.05, label="Flow guidance scale (CFG)",
                                           visible=False)
            with gr.Column(scale=2):
                notice = gr.Markdown(elem_id="notice")
                grid = gr.Image(label="Samples", type="pil", format="png", elem_id="samples", interactive=False,
                                 buttons=["download", "fullscreen"])
                timing = gr.Markdown(elem_id="timing")

        def show_sampler_options(name: str):
            return (gr.update(visible=name == "consistency"), gr.update(visible=name == "flow"),
                    gr.update(visible=name == "flow"))

        sampler.change(show_sampler_options, sampler, [consistency_steps, flow_steps, guidance_scale], queue=False)

        def update(*values) -> tuple:
            text, count, seed_value, sampler_name, steps, flow_steps_value, scale = values
            result: Result = generator.generate(Request(
                prompt=text, seed=int(seed_value or 0), num_images=int(count), sampler=sampler_name,
                consistency_steps=int(steps), flow_steps=int(flow_steps_value), guidance_scale=float(scale)))
            return result.grid, result.notice, result.timing

        # triggers=None: on page load and on every change of an input; "always_last" drops the keystrokes typed
        # while a grid is being made and runs the newest one next; one model, so one generation at a time.
        gr.on(None, update, [prompt, num_images, seed, sampler, consistency_steps, flow_steps, guidance_scale],
              [grid, notice, timing], trigger_mode="always_last", show_progress="hidden",
              concurrency_limit=1, concurrency_id="generate", api_name="generate")
    return app


def launch_app(app, host: str, port: int) -> None:
    """Serve `app` on http://host:port until interrupted (no share link, no footer links)."""
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, footer_links=[], ssr_mode=False)
