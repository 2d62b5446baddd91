// /uploads/new/: each file is posted on its own with a progress bar; drop files to start.
(function () {
  "use strict";

  function init() {
    var form = document.getElementById("upload-form");
    var input = document.getElementById("id_file");
    var zone = document.getElementById("dropzone");
    var list = document.getElementById("upload-list");
    if (!form || !input || !list || !window.XMLHttpRequest || !window.FormData) return;
    var maxBytes = parseInt(form.dataset.maxBytes, 10) || 0;
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;

    function item(file) {
      var li = document.createElement("li");
      li.className = "upload-item";
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name; // textContent: a file name is never HTML
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload progress of " + file.name);
      var status = document.createElement("span");
      status.className = "status";
      status.setAttribute("role", "status");
      status.textContent = "Waiting…";
      li.append(name, bar, status);
      list.append(li);
      return { li: li, bar: bar, status: status };
    }

    function finish(view, ok, text, link) {
      view.li.classList.add(ok ? "done" : "error");
      view.status.textContent = text;
      // Full either way, so the outcome's colour shows (green stored, red refused).
      view.bar.value = 100;
      if (!ok) view.bar.setAttribute("aria-label", "Refused: " + view.bar.getAttribute("aria-label"));
      if (link) {
        var a = document.createElement("a");
        a.href = link;
        a.textContent = "Open";
        view.status.append(" ", a);
      }
    }

    function send(file, view) {
      return new Promise(function (resolve) {
        if (maxBytes && file.size > maxBytes) {
          view.li.dataset.errorCode = "too_large";
          finish(view, false, "Refused: the file is too large (" + file.size + " bytes; the limit is " + maxBytes + " bytes).");
          return resolve();
        }
        var data = new FormData();
        data.append("file", file, file.name);
        var xhr = new XMLHttpRequest();
        xhr.open("POST", form.action);
        xhr.setRequestHeader("Accept", "application/json");
        xhr.setRequestHeader("X-CSRFToken", token);
        xhr.upload.onprogress = function (event) {
          if (event.lengthComputable) view.bar.value = Math.round((event.loaded / event.total) * 100);
        };
        xhr.onloadstart = function () { view.status.textContent = "Uploading…"; };
        xhr.onload = function () {
          var body = null;
          try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
          if (xhr.status === 201 && body) {
            view.li.dataset.uploadId = body.id;
            finish(view, true, "Uploaded.", body.url);
          } else if (body && body.error) {
            view.li.dataset.errorCode = body.error.code;
            finish(view, false, "Refused: " + body.error.message + ".");
          } else {
            finish(view, false, "Failed (HTTP " + xhr.status + "). Reload the page and try again.");
          }
          resolve();
        };
        xhr.onerror = function () {
          finish(view, false, "The upload was interrupted. Check your connection and try again.");
          resolve();
        };
        xhr.send(data);
      });
    }

    function uploadAll(files) {
      var queue = Array.prototype.map.call(files, function (file) { return [file, item(file)]; });
      // Two at a time: parallel enough to feel quick, gentle on the server.
      function worker() {
        var next = queue.shift();
        return next ? send(next[0], next[1]).then(worker) : Promise.resolve();
      }
      return Promise.all([worker(), worker()]).then(function () {
        if (!document.getElementById("see-uploads")) {
          var p = document.createElement("p");
          p.id = "see-uploads";
          var a = document.createElement("a");
          a.href = "/";
          a.textContent = "See your uploads";
          p.append(a);
          list.after(p);
        }
      });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!input.files.length) {
        input.focus();
        return;
      }
      uploadAll(input.files);
      form.reset();
    });

    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("dragover");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("dragover"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) uploadAll(event.dataTransfer.files);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
