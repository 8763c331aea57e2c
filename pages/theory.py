"""Theory: Theorem 1's playground and the toy landscape, live under sliders."""
import streamlit as st

import ui


ui.route_through_app()  # a page opened by its own URL still runs through app.py

st.title("Theory")
st.markdown(
    "**Theorem 1**: gradient descent on A B ≈ ΔW* from a small random start learns ΔW*'s "
    "principal components **one after another, largest first**. Read the curves: each "
    "singular value of A B rises to its dotted target in turn. This is why SD-LoRA's early "
    "directions capture what matters most and later ones are refinements. "
    + ui.paper_link("Theorem 1, Section 3.4 and Appendix A.1") + ".")

# After the first paint: these imports load torch (seconds on a fresh server).
from sdlora.analysis import figures, matrix_factorisation_dynamics, toy_landscape  # noqa: E402

# Computed live under the sliders, kept per setting: going back to a setting is instant.
dynamics = st.cache_data(show_spinner=False, max_entries=32)(matrix_factorisation_dynamics)
landscape = st.cache_data(show_spinner=False, max_entries=32)(toy_landscape)

c1, c2, c3 = st.columns(3)
m = ui.url_control(c1.slider, "m (rows)", name="m", default=30, min_value=5, max_value=60)
n = ui.url_control(c1.slider, "n (columns)", name="n", default=30, min_value=5,
                   max_value=60)
r = ui.url_control(c2.slider, "rank r of A B", name="r", default=4, min_value=1, max_value=8)
top = ui.url_control(c2.slider, "sigma_1 of the target", name="sigma1", default=4.0,
                     min_value=1.0, max_value=8.0)
ratio = ui.url_control(c3.slider, "ratio between consecutive singular values", name="ratio",
                       default=0.5, min_value=0.2, max_value=0.9)
rho = ui.url_control(c3.select_slider, "initial scale rho", name="rho", default=1e-3,
                     options=[1e-6, 1e-4, 1e-3, 1e-2, 1e-1])
eta = ui.url_control(st.slider, "learning rate eta", name="eta", default=0.05, min_value=0.005,
                     max_value=0.2, format="%.3f")
spectrum = tuple(top * ratio ** k for k in range(min(4, m, n)))
try:
    result = dynamics(m, n, r, spectrum, rho, eta, iterations=1500)
    ui.show(figures.theorem_figure(result), None, "theorem1")
    order = ", ".join(f"sigma_{j + 1} at iteration {it}" if it is not None
                      else f"sigma_{j + 1} not yet" for j, it in enumerate(result["learned_at"]))
    st.caption(f"Reached within 10% of the target: {order}.")
except ValueError as err:
    st.error(str(err))

st.divider()
st.subheader("A toy loss landscape")
st.markdown(
    "Two tasks on a model with two weights, so the whole landscape fits on the screen. Each "
    "task's loss is a long valley; where the valleys cross is good for both. Both methods "
    "train on task 1, then on task 2 only. Watch where each path ends: on task 2's valley "
    "only, or where the valleys cross. " + ui.paper_link("Fig. 4a") + ".")
c1, c2, c3 = st.columns(3)
angle1 = ui.url_control(c1.slider, "Task 1 valley angle", name="angle1", default=17,
                        min_value=0, max_value=180)
angle2 = ui.url_control(c1.slider, "Task 2 valley angle", name="angle2", default=104,
                        min_value=0, max_value=180)
kappa = ui.url_control(c2.select_slider, "valley floor curvature", name="kappa", default=0.01,
                       options=[0.001, 0.01, 0.02, 0.05, 0.2, 1.0])
steps = ui.url_control(c2.slider, "gradient steps per task", name="steps", default=200,
                       min_value=20, max_value=600, step=20)
seed = ui.url_control(c3.slider, "initialisation seed", name="seed", default=0, min_value=0,
                      max_value=9)
which = ui.url_control(c3.radio, "Landscape", name="landscape", default="sum",
                       options=["sum", "task 1", "task 2"], horizontal=True)
st.caption("The default geometry was chosen to show the effect; try other seeds and angles: "
           "in a toy this small SD-LoRA does not always end on both valleys.")
try:
    land = landscape(angle1=angle1, angle2=angle2, kappa=kappa, steps=steps, seed=seed)
    ui.show(figures.landscape_figure(land, which), None, "landscape")
    st.page_link("pages/interpolation.py", icon=":material/linear_scale:",
                 label="The same picture measured: real runs' paths on a plane through their "
                       "checkpoints (Interpolation page)")
    losses = land["final_losses"]
    st.caption("Final losses (task 1, task 2): " + "; ".join(
        f"{k}: {v[0]:.3f}, {v[1]:.3f}" for k, v in losses.items()))
except ValueError as err:
    st.error(str(err))
