"""General Chinese/English/mixed text (written for this project) that the tiny tokenizer is trained on.

Used by ``tiny_assets_tokenizer``; kept apart because it is data, not code. Any edit here changes
the committed ``data/tokenizer`` files (rebuild with ``scripts/build_tiny_assets.py``).
"""

GENERAL_ZH = """\
你好，很高兴认识你。
今天天气很好，我们去公园散步吧。
请问附近有地铁站吗？
我想学习怎样用电脑写程序。
这本书讲的是一个关于友谊的故事。
他每天早上六点起床，然后去跑步。
中国有很多历史悠久的城市，比如北京、西安和南京。
春天来了，花都开了，树也绿了。
学习一门新的语言需要耐心和时间。
你能帮我把这段话翻译成英文吗？
周末我打算和家人一起去爬山。
这个问题有点难，我们一起想想办法。
请把窗户关上，外面风很大。
我最喜欢的水果是苹果和西瓜。
医生说多喝水、多休息对身体好。
我们的会议改到下午三点开始。
小明在图书馆里看了一整天的书。
妈妈做的饭菜总是特别好吃。
火车晚点了半个小时，真让人着急。
他是一位非常有经验的老师。
大家好，欢迎来到今天的课程。
人工智能正在改变我们的生活和工作方式。
机器学习模型需要大量的数据来训练。
大语言模型可以回答问题、写文章，也可以帮助写代码。
微调是在预训练模型的基础上继续训练，让模型适应新的任务。
请简单介绍一下你自己。
我不太明白你的意思，能再解释一下吗？
谢谢你的帮助，我已经解决了这个问题。
对不起，我来晚了。
没关系，我们刚刚开始。
这家饭店的菜又便宜又好吃。
他的中文说得越来越流利了。
我们应该保护环境，减少浪费。
地球绕着太阳转，月亮绕着地球转。
一年有四个季节：春、夏、秋、冬。
长江是中国最长的河流。
黄河被称为中华民族的母亲河。
故宫是明清两代的皇宫，现在是一座博物馆。
熊猫是中国特有的动物，非常可爱。
孩子们在操场上快乐地玩耍。
老人常说：“早睡早起身体好。”
这次考试他得了第一名，大家都为他高兴。
时间就像流水，一去不复返。
读书使人进步，思考使人明智。
千里之行，始于足下。
学而时习之，不亦说乎？
有朋自远方来，不亦乐乎？
三人行，必有我师焉。
知之为知之，不知为不知，是知也。
床前明月光，疑是地上霜。
举头望明月，低头思故乡。
白日依山尽，黄河入海流。
欲穷千里目，更上一层楼。
春眠不觉晓，处处闻啼鸟。
夜来风雨声，花落知多少。
明天会下雨吗？记得带伞。
这件衣服多少钱？可以便宜一点吗？
我的手机没电了，可以借用一下你的充电器吗？
请在这里签名，并写上今天的日期。
他把钥匙忘在家里了，只好等家人回来。
我们班一共有四十二个学生。
这座桥长一千二百米，是这里最长的桥。
从北京到上海坐高铁大约需要五个小时。
一斤苹果八块钱，两斤一共十六块。
她每个月存下一部分工资，为将来做准备。
这个城市的交通越来越方便了。
晚上十点以后请保持安静。
下雨天路滑，开车要小心。
健康的饮食和适量的运动同样重要。
他喜欢画画，也喜欢弹钢琴。
我们一起努力，一定能完成这个项目。
这篇文章的结构很清楚，观点也很新颖。
请按照说明书的步骤安装软件。
如果遇到问题，请联系我们的客服。
系统正在升级，请稍后再试。
文件已经保存成功。
密码错误，请重新输入。
网络连接失败，请检查你的设置。
训练完成后，模型会保存在输出目录里。
损失函数的值在不断下降，说明模型正在学习。
学习率太大可能导致训练不稳定。
验证集上的准确率达到了百分之八十。
数据需要先清洗，再分成训练集和验证集。
这台机器只有两个处理器核心，没有显卡。
请用一句话总结这段文字的主要内容。
下面哪个选项是正确的？请说明理由。
请写一首关于秋天的短诗。
秋风吹过田野，金黄的稻谷弯下了腰。
冬天的早晨，窗户上结满了美丽的冰花。
夏天的夜晚，我们坐在院子里看星星。
小猫躺在阳光下，懒洋洋地睡着了。
小狗看见主人回家，高兴地摇着尾巴。
河边的柳树随风轻轻摆动。
远处的山上飘着几朵白云。
街上的人来来往往，非常热闹。
市场里卖着新鲜的蔬菜和水果。
我们要尊重别人的意见，也要勇敢表达自己的想法。
诚实是做人最基本的品质。
失败是成功之母，不要轻易放弃。
只要功夫深，铁杵磨成针。
一分耕耘，一分收获。
百闻不如一见。
众人拾柴火焰高。
他对这个结果感到非常满意。
这个方法简单有效，值得推广。
经济发展离不开科学技术的进步。
教育是国家发展的基础。
城市和农村的差距正在逐步缩小。
越来越多的年轻人选择回到家乡创业。
运动会上，同学们你追我赶，争夺第一。
比赛结束了，我们队以三比二获胜。
请问这个字怎么读？
这个词语是什么意思？
请用“虽然……但是……”造一个句子。
虽然今天很累，但是我很开心。
因为下雨，所以比赛推迟了。
如果明天不下雨，我们就去郊游。
他一边听音乐，一边做作业。
我们先吃饭，然后去看电影。
这道数学题的答案是二十五。
三加五等于八，九减四等于五。
两千零二十四年是闰年，二月有二十九天。
一小时有六十分钟，一分钟有六十秒。
一百年叫做一个世纪。
请把这些数字从小到大排列。
零、一、二、三、四、五、六、七、八、九。
十、百、千、万、亿都是常用的数位。
他花了三百五十块钱买了一双鞋。
这个村子里住着大约六百户人家。
图书馆有一万多本书。
这条路全长八十七公里。
祝你生日快乐，天天开心！
新年快乐，万事如意！
恭喜你考上了理想的大学。
一路平安，到了给我打个电话。
请慢用，有需要随时叫我。
欢迎下次光临。
您好，请问有什么可以帮您？
我想预订一张明天去广州的机票。
请出示您的身份证。
房间里有空调、电视和免费的无线网络。
早餐时间是早上七点到九点。
厨房里有米、面、油、盐和各种调料。
他正在准备明天的演讲稿。
公司决定下个月推出新产品。
客户对我们的服务提出了一些建议。
我们会认真考虑您的意见，并尽快改进。
"""

GENERAL_EN = """\
Hello, how are you today?
I am fine, thank you. And you?
The quick brown fox jumps over the lazy dog.
Machine learning is a field of study that gives computers the ability to learn.
Large language models are trained on a large amount of text.
Fine-tuning adapts a pretrained model to a new task with a small dataset.
LoRA adds small low-rank matrices to the attention and feed-forward layers.
The learning rate controls how large each update step is.
Please save the checkpoint after every epoch.
The training loss went down from four to less than one.
We evaluate the model on a held-out validation set.
The tokenizer splits text into tokens and maps them to integer ids.
Special tokens mark the beginning and the end of a sequence.
This repository contains the code, the configs and a tiny sample dataset.
Run the tests before you open a pull request.
The weather is nice, let us go for a walk in the park.
She reads a book every week and writes notes about it.
He works as a software engineer in a small company.
They moved to a new city last year.
Could you please help me translate this sentence into Chinese?
What time does the train leave tomorrow morning?
The meeting has been moved to three o'clock in the afternoon.
Keep calm and carry on.
Practice makes perfect.
Knowledge is power.
Time flies when you are having fun.
An apple a day keeps the doctor away.
Where there is a will, there is a way.
The early bird catches the worm.
Actions speak louder than words.
Python is a popular programming language for data science.
def add(a, b):
    return a + b
for i in range(10):
    print(i)
import torch
model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-chat-hf")
tokenizer = AutoTokenizer.from_pretrained("data/tokenizer")
x = torch.randn(4, 16)
loss.backward()
optimizer.step()
if __name__ == "__main__":
    main()
{"text": "hello world", "label": 1}
https://example.com/path/to/file.html
user@example.com
Version 2.1.0 was released on 2024-06-01.
The price is $19.99, including 8% tax.
The answer is 42.
Chapter 1: Introduction
Section 3.2: Results and discussion
Table 4 shows the accuracy on the test set.
Figure 2 plots the loss curve over 500 steps.
Step 100/500, loss 1.234, lr 2e-4
Epoch 3 finished in 12.5 seconds.
The model has 7 billion parameters and 32 layers.
We used a batch size of 16 and a sequence length of 512.
Gradient accumulation lets us simulate a larger batch.
Mixed precision training uses bf16 or fp16 to save memory.
Quantization stores weights in 4 or 8 bits.
The server listens on port 8000.
Send a POST request to the chat completions endpoint.
The response is streamed back token by token.
Please check your internet connection and try again.
File not found: config.yaml
Error: out of memory
Warning: this feature is experimental.
Done.
Yes, of course.
No, thank you.
I don't know the answer to that question.
Let me think about it step by step.
First, read the question carefully.
Second, write down what you know.
Finally, check your answer.
In summary, the results are encouraging.
Thank you for your attention.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
January, February, March, April, May, June, July, August, September, October, November, December.
one, two, three, four, five, six, seven, eight, nine, ten.
eleven, twelve, thirteen, twenty, thirty, forty, fifty, hundred, thousand, million.
red, orange, yellow, green, blue, purple, black, white.
The children are playing football on the playground.
My favourite food is noodles with beef and vegetables.
Beijing is the capital of China.
Shanghai is one of the largest cities in the world.
The Great Wall is more than two thousand years old.
Water boils at 100 degrees Celsius.
The Earth goes around the Sun once a year.
There are seven days in a week and twelve months in a year.
Reading is to the mind what exercise is to the body.
Good morning! Good afternoon! Good evening! Good night!
See you later.
Have a nice day!
Happy birthday to you!
Merry Christmas and happy new year!
Welcome to our store. How can I help you?
I would like to book a table for two people at seven.
How much does this cost?
Can you speak more slowly, please?
What does this word mean?
How do you say this in Chinese?
Learning Chinese is fun but the characters take time.
Every student should have the chance to learn.
The committee will announce the decision next week.
The government is investing in clean energy and public transport.
Scientists have discovered a new species of frog in the rainforest.
The company reported strong growth in the second quarter.
The concert was cancelled because of the storm.
"""

GENERAL_MIXED = """\
我正在用 Python 训练一个 Llama 模型。
这个模型有 2 层，隐藏层大小是 128。
请运行 make train，然后查看 outputs 目录。
LoRA 的秩 r 通常设为 8、16 或者 64。
今天的 loss 从 4.0 降到了 0.3，效果不错！
GPU 显存不够的时候，可以试试 QLoRA 或者 4-bit 量化。
Hello，你好！Good morning，早上好！
我的邮箱是 user@example.com，有问题请联系我。
会议时间：2024 年 6 月 1 日（星期六）上午 9:30。
价格：¥128.00（含税）。
温度：25℃，湿度：60%。
【通知】系统将于今晚 23:00 至 24:00 进行维护。
“你吃饭了吗？”他问。‘还没有。’我回答。
请注意：密码至少 8 位，包含字母和数字；不要使用生日！
第一步：安装依赖；第二步：准备数据；第三步：开始训练。
问：一年有多少天？答：三百六十五天，闰年三百六十六天。
😀 今天心情很好！👍
🚀 模型训练完成 ✅
Ａ、Ｂ、Ｃ 三个选项中只有一个是正确的。
全角数字：０１２３４５６７８９；半角数字：0123456789。
"""

# Frequent characters, so that most everyday Chinese gets its own token and
# only rare characters need byte fallback.
COMMON_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法"
    "所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政"
    "四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最"
    "立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根"
    "论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联"
    "什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米"
    "整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办"
    "青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却"
    "专状育厂京识适属圆包火住调满县局照参红细引听该铁价严首底液官德随病苏失尔死讲配女黄推显谈罪神艺呢席含企望密批营项防举球"
    "英氧势告李台落木帮轮破亚师围注远字材排供河态封另施减树溶怎止案言士均武固叶鱼波视仅费紧爱左章早朝害续轻服试食充兵源判护"
    "司足某练差致板田降黑犯负击范继兴似余坚曲输修故城夫够送笑船占右财吃富春职觉汉画功巴跟虽杂飞检吸助升阳互初创抗考投坏策古"
    "径换未跑留钢曾端责站简述钱副尽帝射草冲承独令限阿宣环双请超微让控州良轴找否纪益依优顶础载倒房突坐粉敌略客袁冷胜绝析块剂"
    "测丝协诉念陈仍罗盐友洋错苦夜刑移频逐靠混母短皮终聚汽村云哪既距卫停烈央察烧迅境若印洲刻括激孔搞甚室待核校散侵吧甲游久菜"
    "味旧模湖货损预阻毫普稳乙妈植息扩银语挥酒守拿序纸医缺雨吗针刘啊急唱误训愿审附获茶鲜粮斤孩脱硫肥善龙演父渐血欢械掌歌沙刚"
    "攻谓盾讨晚粒乱燃矛乎杀药宁鲁贵钟煤读班伯香介迫句丰培握兰担弦蛋沉假穿执答乐谁顺烟缩征脸喜松脚困异免背星福买染井概慢怕磁"
    "倍祖皇促静补评翻肉践尼衣宽扬棉希伤操垂秋宜氢套督振架亮末宪庆编牛触映雷销诗座居抓裂胞呼娘景威绿晶厚盟衡鸡孙延危胶屋乡临"
    "陆顾掉呀灯岁措束耐剧玉赵跳哥季课凯胡额款绍卷齐伟蒸殖永宗苗川炉岩弱零杨奏沿露杆探滑镇饭浓航怀赶库夺伊灵税途灭赛归召鼓播"
    "盘裁险康唯录菌纯借糖盖横符私努堂域枪润幅哈竟熟虫泽脑壤碳欧遍侧寨敢彻虑斜薄庭纳弹饲伸折麦湿暗荷瓦塞床筑恶户访塔奇透梁刀"
    "旋迹卡氯遇份毒泥退洗摆灰彩卖耗夏择忙铜献硬予繁圈雪函亦抽篇阵阴丁尺追堆雄迎泛爸楼避谋吨野猪旗累偏典馆索秦脂潮爷豆忽托惊"
    "塑遗愈朱替纤粗倾尚痛楚谢奋购磨君池旁碎骨监捕弟暴割贯殊释词亡壁顿宝午尘闻揭炮残冬桥妇警综招吴付浮遭徐您摇谷赞箱隔订男吹"
    "园纷唐败宋玻巨耕坦荣闭湾键凡驻锅救恩剥凝碱齿截炼麻纺禁废盛版缓净睛昌婚涉筒嘴插岸朗庄街藏姑贸腐奴啦惯乘伙恢匀纱扎辩耳彪"
    "臣亿璃抵脉秀萨俄网舞店喷纵寸汗挂洪贺闪柬爆烯津稻墙软勇像滚厘蒙芳肯坡柱荡腿仪旅尾轧冰贡登黎削钻勒逃障氨郭峰币港伏轨亩毕"
    "擦莫刺浪秘援株健售股岛甘泡睡童铸汤阀休汇舍牧绕炸哲磷绩朋淡尖启陷柴呈徒颜泪稍忘泵蓝拖洞授镜辛壮锋贫虚弯摩泰幼廷尊窗纲弄"
    "隶疑氏宫姐震瑞怪尤琴循描膜违夹腰缘珠穷森枝竹沟催绳忆邦剩幸浆栏拥牙贮礼滤钠纹罢拍咱喊袖埃勤罚焦潜伍墨欲缝姓刊饱仿奖铝鬼"
    "丽跨默挖链扫喝袋炭污幕诸弧励梅奶洁灾舟鉴苯讼抱毁懂寒智埔寄届跃渡挑丹艰贝碰拔爹戴码梦芽熔赤渔哭敬颗奔铅仲虎稀妹乏珍申桌"
    "遵允隆螺仓魏锐晓氮兼隐碍赫拨忠肃缸牵抢博巧壳兄杜讯诚碧祥柯页巡矩悲灌龄伦票寻桂铺圣恐恰郑趣抬荒腾贴柔滴猛阔辆妻填撤储签"
    "闹扰紫砂递戏吊陶伐喂疗瓶婆抚臂摸忍虾蜡邻胸巩挤偶弃槽劲乳邓吉仁烂砖租乌舰伴瓜浅丙暂燥橡柳迷暖牌秧胆详簧踏瓷谱呆宾糊洛辉"
    "愤竞隙怒粘乃绪肩籍敏涂熙皆侦悬掘享纠醒狂锁淀恨牲霸爬赏逆玩陵祝秒浙貌役彼悉鸭趋凤晨畜辈秩卵署梯炎滩棋驱筛峡冒啥寿译浸泉"
    "帽迟硅疆贷漏稿冠嫩胁芯牢叛蚀奥鸣岭羊凭串塘绘酵融盆锡庙筹冻辅摄袭筋拒僚旱钾鸟漆沈眉疏添棒穗硝韩逼扭侨凉挺碗栽炒杯患馏劝"
    "豪辽勃鸿旦吏拜狗埋辊掩饮搬骂辞勾扣估蒋绒雾丈朵姆拟宇辑陕雕偿蓄崇剪倡厅咬驶薯刷斥番赋奉佛浇漫曼扇钙桃扶仔返俗亏腔鞋棱覆"
    "框悄叔撞骗勘旺沸孤吐孟渠屈疾妙惜仰狠胀谐抛霉桑岗嘛衰盗渗脏赖涌甜曹阅肌哩厉烃纬毅昨伪症煮叹钉搭茎笼酷偷弓锥恒杰坑鼻翼纶"
    "叙狱逮罐络棚抑膨蔬寺骤穆冶枯册尸凸绅坯牺焰轰欣晋瘦御锭锦丧旬锻垄搜扑邀亭酯迈舒脆酶闲忧酚顽羽涨卸仗陪辟惩杭姚肚捉飘漂昆"
    "欺吾郎烷汁呵饰萧雅邮迁燕撒姻赴宴烦债帐斑铃旨醇董饼雏姿拌傅腹妥揉贤拆歪葡胺丢浩徽昂垫挡览贪慰缴汪慌冯诺姜谊凶劣诬耀昏躺"
    "盈骑乔溪丛卢抹闷咨刮驾缆悟摘铒掷颇幻柄惠惨佳仇腊窝涤剑瞧堡泼葱罩霍捞胎苍滨俩捅湘砍霞邵萄疯淮遂熊粪烘宿档戈驳嫂裕徙箭捐"
    "肠撑晒辨殿莲摊搅酱屏疫哀蔡堵沫皱畅叠阁莱敲辖钩痕坝巷饿祸丘玄溜曰逻彭尝卿妨艇吞韦怨矮歇"
)

