//! Images, speech, transcription, rerank and legacy completions through the
//! gateway, each checked at the mock upstream and in the spend record.

use deltallm_e2e::{MASTER_KEY, TestApp, on_both_backends, test_settings};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn deploy(app: &TestApp, name: &str, mode: &str, api_base: &str, info: Value) {
    let mut model_info = json!({"mode": mode});
    model_info.as_object_mut().unwrap().extend(info.as_object().unwrap().clone());
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": name, "deployment_id": name, "deltallm_params": {"provider": "openai", "model": format!("up-{name}"), "api_base": api_base, "api_key": "sk-up"}, "model_info": model_info}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

on_both_backends!(non_chat_endpoints_are_proxied_and_priced, |url: String| async move {
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", "Bearer sk-up"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"created": 1, "data": [{"url": "https://img/1"}, {"url": "https://img/2"}]})),
        )
        .expect(1)
        .mount(&up)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/mpeg")
                .set_body_bytes(vec![0xff, 0xfb, 0x90, 0x00]),
        )
        .expect(1)
        .mount(&up)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "hello world"})))
        .expect(1)
        .mount(&up)
        .await;
    // Legacy completions are served through the deployment's chat endpoint (RUN-4).
    Mock::given(method("POST")).and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "cmpl", "object": "chat.completion", "created": 5, "model": "up-chat", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})))
        .expect(1).mount(&up).await;
    let base = format!("{}/v1", up.uri());
    let app = TestApp::start(&url, test_settings()).await;
    deploy(&app, "img", "image_generation", &base, json!({"input_cost_per_image": 0.04})).await;
    deploy(&app, "tts", "audio_speech", &base, json!({"input_cost_per_character": 0.00001})).await;
    deploy(&app, "stt", "audio_transcription", &base, json!({})).await;
    deploy(&app, "chat", "chat", &base, json!({})).await;
    let post = |p: &'static str, body: Value| app.client.post(app.url(p)).bearer_auth(MASTER_KEY).json(&body).send();

    let img = post("/v1/images/generations", json!({"model": "img", "prompt": "a cat", "n": 2})).await.unwrap();
    assert_eq!(img.status(), 200);
    assert_eq!(img.json::<Value>().await.unwrap()["data"][1]["url"], "https://img/2");

    let speech = post("/v1/audio/speech", json!({"model": "tts", "input": "hello", "voice": "alloy"})).await.unwrap();
    assert_eq!(speech.status(), 200);
    assert_eq!(speech.headers()["content-type"], "audio/mpeg");
    assert_eq!(speech.bytes().await.unwrap().as_ref(), &[0xff, 0xfb, 0x90, 0x00]);

    let form = reqwest::multipart::Form::new().text("model", "stt").part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8, 2, 3]).file_name("a.wav").mime_str("audio/wav").unwrap(),
    );
    let stt = app
        .client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(MASTER_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(stt.status(), 200);
    assert_eq!(stt.json::<Value>().await.unwrap()["text"], "hello world");
    let sent = &up
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/v1/audio/transcriptions")
        .unwrap();
    let sent_body = String::from_utf8_lossy(&sent.body);
    assert!(sent_body.contains("up-stt") && sent_body.contains("a.wav"), "model replaced, file forwarded");

    let no_file = app
        .client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(MASTER_KEY)
        .multipart(reqwest::multipart::Form::new().text("model", "stt"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_file.status(), 400);

    let cmpl = post("/v1/completions", json!({"model": "chat", "prompt": "say ok", "max_tokens": 4})).await.unwrap();
    assert_eq!(cmpl.status(), 200);
    assert_eq!(
        cmpl.json::<Value>().await.unwrap(),
        json!({"id": "cmpl", "object": "text_completion", "created": 5, "model": "up-chat",
               "choices": [{"text": "ok", "index": 0, "logprobs": null, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
    );
    let sent: Value = up
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/v1/chat/completions")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(sent, json!({"model": "up-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "say ok"}]}));
    // Options only the old endpoint had are refused before any upstream call.
    let echo = post("/v1/completions", json!({"model": "chat", "prompt": "x", "echo": true})).await.unwrap();
    assert_eq!(echo.status(), 400);
    assert_eq!(echo.json::<Value>().await.unwrap()["error"]["param"], "echo");
    // Streaming is refused where the endpoint has no stream (400, nothing sent upstream).
    let s = post("/v1/embeddings", json!({"model": "chat", "input": "x", "stream": true})).await.unwrap();
    assert_eq!(s.status(), 400);
    // Image endpoint with a chat model: mode mismatch.
    let wrong = post("/v1/images/generations", json!({"model": "chat", "prompt": "x"})).await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert!(wrong.text().await.unwrap().contains("is a chat model"));

    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(20).await.unwrap();
    let by = |call: &str| {
        rows.iter().find(|r| r.call_type == call && r.status == "success").unwrap_or_else(|| panic!("{call}"))
    };
    let img_row = by("image_generation");
    assert_eq!((img_row.images, img_row.billing_unit.as_str(), img_row.spend), (2, "image", 0.08));
    let tts_row = by("speech");
    assert_eq!((tts_row.characters, tts_row.billing_unit.as_str()), (5, "character"));
    assert!((tts_row.spend - 0.00005).abs() < 1e-12);
    assert!(by("transcription").unpriced_reason.is_some());
    assert_eq!(by("text_completion").total_tokens, 3);
    app.stop().await;
});

on_both_backends!(rerank_uses_a_rerank_deployment, |url: String| async move {
    let up = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/rerank"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": [{"index": 1, "relevance_score": 0.9}], "usage": {"prompt_tokens": 10, "total_tokens": 10}})))
        .expect(1).mount(&up).await;
    let app = TestApp::start(&url, test_settings()).await;
    // No known provider serves rerank (VAL-2); a custom provider string allows every mode.
    let (s, b) = app
        .post("/ui/api/models", &json!({"model_name": "rr", "deltallm_params": {"provider": "cohere-compatible", "model": "rerank-v3", "api_base": format!("{}/v1", up.uri()), "api_key": "k"}, "model_info": {"mode": "rerank", "input_cost_per_token": 0.000002}}))
        .await;
    assert_eq!(s, 200, "{b}");
    let resp = app
        .client
        .post(app.url("/v1/rerank"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "rr", "query": "q", "documents": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["results"][0]["index"], 1);
    app.stop().await;
});

on_both_backends!(streamed_completions_arrive_as_text_completion_chunks, |url: String| async move {
    let up = MockServer::start().await;
    let sse = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"He\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("content-type", "text/event-stream").set_body_string(sse),
        )
        .expect(1)
        .mount(&up)
        .await;
    let app = TestApp::start(&url, test_settings()).await;
    deploy(&app, "chat", "chat", &format!("{}/v1", up.uri()), json!({})).await;
    let resp = app
        .client
        .post(app.url("/v1/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "chat", "prompt": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["choices"][0]["text"], "He");
    let second: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        (second["choices"][0]["text"].as_str(), second["choices"][0]["finish_reason"].as_str()),
        (Some("llo"), Some("stop"))
    );
    assert_eq!(events[2], "data: [DONE]");
    app.stop().await;
});

on_both_backends!(transcription_uploads_follow_the_configured_body_limit, |url: String| async move {
    // 3 MiB configured: above axum's own 2 MiB default, so an upload between
    // the two shows which limit applies.
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "long"})))
        .expect(1)
        .mount(&up)
        .await;
    let mut settings = test_settings();
    settings.max_request_body_bytes = 3 * 1024 * 1024;
    let app = TestApp::start(&url, settings).await;
    deploy(&app, "stt", "audio_transcription", &format!("{}/v1", up.uri()), json!({})).await;
    let upload = |bytes: usize| {
        let form = reqwest::multipart::Form::new().text("model", "stt").part(
            "file",
            reqwest::multipart::Part::bytes(vec![7u8; bytes]).file_name("a.wav").mime_str("audio/wav").unwrap(),
        );
        app.client.post(app.url("/v1/audio/transcriptions")).bearer_auth(MASTER_KEY).multipart(form).send()
    };
    let fits = upload(5 * 1024 * 1024 / 2).await.unwrap();
    assert_eq!(fits.status(), 200, "2.5 MiB is under the configured limit");
    let over = upload(7 * 1024 * 1024 / 2).await.unwrap();
    let status = over.status();
    let text = over.text().await.unwrap();
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    app.stop().await;
});
