"""The page `serve.py` serves: the avatar's video with its audio, a text box, an audio file picker and a live
microphone. Plain HTML and the browser's own WebRTC: nothing to build or fetch."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ernerf live avatar</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; max-width: 60em; }
 video { width: 100%; max-width: 720px; background: #111; display: block; }
 textarea { width: 100%; max-width: 720px; height: 4em; }
 #status, #frames { color: #555; margin: .5em 0; }
</style></head>
<body>
<h1>ernerf live avatar</h1>
<video id="avatar" autoplay playsinline></video>
<p id="status">connecting...</p>
<p id="frames">no video yet</p>
<textarea id="text" placeholder="Type what the avatar should say"></textarea><br>
<button id="say">Say it</button>
<input type="file" id="file" accept="audio/*,video/*"> <button id="send">Say this file</button>
<button id="mic">Talk live (microphone)</button>
<script>
let session = null;
const status = (s) => document.getElementById("status").textContent = s;
async function post(path, body, type) {
  const r = await fetch(path, {method: "POST", body: body, headers: {"Content-Type": type}});
  if (!r.ok) { status("error: " + await r.text()); return null; }
  return r.json();
}
let pc = null;
async function connect(microphone) {
  if (pc) pc.close();
  pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  if (microphone) microphone.getAudioTracks().forEach((t) => pc.addTrack(t, microphone));
  else pc.addTransceiver("audio", {direction: "recvonly"});
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
  status(microphone ? "live: the avatar says what you say (about 0.4 s later)"
                    : "connected: type something and press Say it");
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
let microphone = null;
document.getElementById("mic").onclick = async () => {
  const button = document.getElementById("mic");
  if (microphone) {
    microphone.getTracks().forEach((t) => t.stop()); microphone = null;
    button.textContent = "Talk live (microphone)"; return connect(null);
  }
  microphone = await navigator.mediaDevices.getUserMedia({audio: true});
  button.textContent = "Stop talking"; await connect(microphone);
};
const video = document.getElementById("avatar");
let shown = 0, counted = 0, since = performance.now();
const countFrame = () => { shown += 1; video.requestVideoFrameCallback(countFrame); };
if ("requestVideoFrameCallback" in video) {  // a stalled stream shows here, as a rate that drops to 0
  video.requestVideoFrameCallback(countFrame);
  setInterval(() => {
    const now = performance.now(), rate = (shown - counted) * 1000 / (now - since);
    counted = shown; since = now;
    document.getElementById("frames").textContent = `video: ${shown} frames shown, ${rate.toFixed(1)} frames/s`;
  }, 1000);
}
connect(null);
</script></body></html>
"""
