"""The built-in mock upstream: OpenAI, Anthropic and Gemini wire formats on a loopback port."""
