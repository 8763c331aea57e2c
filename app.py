"""SD-LoRA Lab: `streamlit run app.py`. Routes to one page per file in pages/.

The menu is st.navigation's, at the top: it is drawn with the first message of a run, and
Streamlit's own sidebar menu, which on a fresh server would first list the pages/ folder's file
names, is switched off in .streamlit/config.toml. Then the page's title and text (pages import
torch only after them); the run picker and the device line (which imports torch) are drawn
after the page, into places kept for them in the sidebar, with the link to the view (ui's
docstring: every page keeps its choices in the URL).
"""
import streamlit as st

import ui

st.set_page_config(page_title="SD-LoRA Lab", page_icon=":material/science:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/tradeoff.py", title="Trade-off", icon=":material/balance:"),
    st.Page("pages/train.py", title="Train", icon=":material/play_arrow:"),
    st.Page("pages/accuracy.py", title="Accuracy", icon=":material/grid_on:"),
    st.Page("pages/magnitudes.py", title="Magnitudes", icon=":material/show_chart:"),
    st.Page("pages/directions.py", title="Directions", icon=":material/explore:"),
    st.Page("pages/interpolation.py", title="Interpolation", icon=":material/linear_scale:"),
    st.Page("pages/theory.py", title="Theory", icon=":material/functions:"),
    st.Page("pages/efficiency.py", title="Efficiency", icon=":material/speed:"),
]

page = st.navigation(PAGES, position="top")
with st.sidebar:
    picker, link, device = st.container(), st.container(), st.empty()
ui.begin_view()  # the choices a link brings (every page keeps its choices in the URL)
try:
    page.run()
finally:
    with picker:
        ui.run_picker()
    with link:
        ui.end_view()
    with device:
        ui.device_status()
