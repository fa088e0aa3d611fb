// ReNeg tab: live progress for the training job (same pattern as the webui's Train tab).
//
// The result HTML and the gallery are cleared by the Python step that runs before training (see tab.py): in
// gradio 3.41 a gr.HTML's wrapper and its inner div carry the same id, and emptying the wrapper from here would
// detach the component so that the run's result or error never appears.

// The innermost element with this id (the component's own node, not gradio's wrapper).
function reneg_inner(id) {
    var el = gradioApp().getElementById(id);
    while (el) {
        var inner = el.querySelector('#' + id);
        if (!inner) break;
        el = inner;
    }
    return el;
}

function reneg_start_training() {
    var id = randomId();
    var progressText = reneg_inner('reneg_train_progress');
    requestProgress(id, gradioApp().getElementById('reneg_train_output'), gradioApp().getElementById('reneg_train_gallery'), function() {
        if (progressText) progressText.textContent = '';
    }, function(progress) {
        if (progressText) progressText.textContent = progress.textinfo || '';
    });

    var res = Array.from(arguments);
    res[0] = id;
    return res;
}
