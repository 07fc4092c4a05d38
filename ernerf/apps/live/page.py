"""The page `serve.py` serves: the avatar's video with its audio, a text box, an audio file picker and a microphone
button. Plain HTML and the browser's own WebRTC: nothing to build or fetch."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ernerf live avatar</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; max-width: 60em; }
 video { width: 100%; max-width: 720px; background: #111; display: block; }
 textarea { width: 100%; max-width: 720px; height: 4em; }
 #status { color: #555; margin: .5em 0; }
</style></head>
<body>
<h1>ernerf live avatar</h1>
<video id="avatar" autoplay playsinline></video>
<p id="status">connecting...</p>
<textarea id="text" placeholder="Type what the avatar should say"></textarea><br>
<button id="say">Say it</button>
<input type="file" id="file" accept="audio/*,video/*"> <button id="send">Say this file</button>
<button id="mic">Speak into the microphone</button>
<script>
let session = null;
const status = (s) => document.getElementById("status").textContent = s;
async function post(path, body, type) {
  const r = await fetch(path, {method: "POST", body: body, headers: {"Content-Type": type}});
  if (!r.ok) { status("error: " + await r.text()); return null; }
  return r.json();
}
async function connect() {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const media = new MediaStream();
  pc.ontrack = (e) => { media.addTrack(e.track); document.getElementById("avatar").srcObject = media; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
  });
  const answer = await post("/offer", JSON.stringify(pc.localDescription), "application/json");
  if (!answer) return;
  session = answer.session;
  await pc.setRemoteDescription(answer);
  status("connected: type something and press Say it");
}
document.getElementById("say").onclick = async () => {
  const text = document.getElementById("text").value;
  const r = await post("/say", JSON.stringify({session: session, text: text}), "application/json");
  if (r) status("saying " + r.seconds.toFixed(1) + " s of speech");
};
document.getElementById("send").onclick = async () => {
  const file = document.getElementById("file").files[0];
  if (!file) return status("choose an audio file first");
  const r = await post("/audio?session=" + session, file, "application/octet-stream");
  if (r) status("saying " + r.seconds.toFixed(1) + " s of " + file.name);
};
let recorder = null;
document.getElementById("mic").onclick = async () => {
  const button = document.getElementById("mic");
  if (recorder) { recorder.stop(); return; }
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  const chunks = [];
  recorder = new MediaRecorder(mic);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    mic.getTracks().forEach((t) => t.stop());
    recorder = null; button.textContent = "Speak into the microphone";
    const r = await post("/audio?session=" + session, new Blob(chunks), "application/octet-stream");
    if (r) status("saying your " + r.seconds.toFixed(1) + " s");
  };
  recorder.start(); button.textContent = "Stop and say it"; status("recording...");
};
connect();
</script></body></html>
"""
