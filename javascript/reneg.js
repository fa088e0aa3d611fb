// ReNeg tab: live progress for the training job (same pattern as the webui's Train tab).
function reneg_start_training() {
    gradioApp().querySelector('#reneg_train_result').innerHTML = '';

    var id = randomId();
    requestProgress(id, gradioApp().getElementById('reneg_train_output'), gradioApp().getElementById('reneg_train_gallery'), function() {}, function(progress) {
        gradioApp().getElementById('reneg_train_progress').innerHTML = progress.textinfo;
    });

    var res = Array.from(arguments);
    res[0] = id;
    return res;
}
